"""Creating and removing a namespace's broker objects (`cortensor brokers setup`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import replace

from aio_pika.abc import AbstractRobustConnection
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from cortensor.adapters import amqp, bounds, jetstream, reach
from cortensor.adapters.topology import QueueSpec, Topology
from cortensor.errors import BrokerUnavailable
from cortensor.settings import Settings


async def _rabbitmq(settings: Settings) -> AbstractRobustConnection:
    """A connection to RabbitMQ, or BrokerUnavailable that says where it looked."""
    try:
        return await amqp.connect_as(settings)
    except ConnectionError as exc:  # aio-pika's AMQPConnectionError is one
        where = settings.amqp_url.rsplit("@", 1)[-1]  # never print the password
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {where}: {exc}") from exc


async def _nats(settings: Settings, *, name: str) -> NATS:
    """A connection to NATS, or BrokerUnavailable within Settings.connect_timeout_s:
    nats-py, told to reconnect for ever, would wait for ever for a server that is down."""
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            return await jetstream.connect_as(settings, name=name)
    except TimeoutError as exc:
        raise BrokerUnavailable(reach.unreachable("NATS", settings)) from exc


def queues_of(topology: Topology, settings: Settings) -> list[QueueSpec]:
    """The topology's queues, the router's bounded at Settings.router_queue_max jobs."""
    return [
        replace(q, arguments={**q.arguments, "x-max-length": settings.router_queue_max})
        if q.name == topology.router_queue
        else q
        for q in topology.queues
    ]


async def setup_brokers(settings: Settings) -> list[str]:
    """Declare the RabbitMQ topology and the JetStream streams (idempotent)."""
    topology = Topology(settings.namespace)
    connection = await _rabbitmq(settings)
    async with connection:
        declared = await amqp.apply_topology(await connection.channel(), topology, queues=[])
        for queue in queues_of(topology, settings):
            how = await bounds.declare_bounded(connection, queue)
            declared.append(
                f"queue {queue.name} <- {queue.exchange}[{queue.routing_key}]"
                + (f" (bounds by policy {bounds.policy_name(queue)})" if how == "policy" else "")
            )
    nc = await _nats(settings, name="cortensor-setup")
    try:
        declared += await jetstream.apply_streams(
            nc.jetstream(),
            topology,
            retention_s=settings.retention_h * 3600.0,
            replicas=settings.stream_replicas,
        )
    finally:
        await nc.drain()
    return declared


async def teardown_brokers(
    settings: Settings,
    node_ids: Iterable[tuple[str, str]] = (),
    *,
    node_queues: Iterable[str] = (),
) -> None:
    """Delete a namespace's queues, exchanges and streams; `node_ids` are (id, hw_class),
    `node_queues` the names of more node queues."""
    topology = Topology(settings.namespace)
    connection = await _rabbitmq(settings)
    async with connection:
        channel = await connection.channel()
        queues = [q.name for q in topology.queues]
        queues += [topology.node_queue(node, hw).name for node, hw in node_ids]
        queues += list(node_queues)
        for name in queues:
            await channel.queue_delete(name)
        for exchange in topology.exchanges:
            await channel.exchange_delete(exchange.name)
    nc = await _nats(settings, name="cortensor-teardown")
    try:
        js = nc.jetstream()
        for stream in topology.streams:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream.name)
    finally:
        await nc.drain()
