"""RabbitMQ over aio-pika: topology, confirmed publishing, dead letters."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection, ExchangeType

from cortensor.adapters.topology import QueueSpec, Topology

REASON_HEADER = "x-cortensor-reason"


async def connect(url: str) -> AbstractRobustConnection:
    """A robust connection that reconnects by itself."""
    return await aio_pika.connect_robust(url)


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> None:
    """Declare a durable queue and its binding (idempotent)."""
    queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
    await queue.bind(spec.exchange, routing_key=spec.routing_key)


async def apply_topology(channel: AbstractChannel, topology: Topology) -> list[str]:
    """Declare every exchange and queue of the topology; returns what it declared."""
    declared = []
    for exchange in topology.exchanges:
        await channel.declare_exchange(exchange.name, ExchangeType(exchange.type), durable=True)
        declared.append(f"exchange {exchange.name} ({exchange.type})")
    for queue in topology.queues:
        await declare_queue(channel, queue)
        declared.append(f"queue {queue.name} <- {queue.exchange}[{queue.routing_key}]")
    return declared


def json_message(
    body: bytes, *, message_id: str, headers: dict[str, str] | None = None
) -> aio_pika.Message:
    """A persistent JSON message."""
    return aio_pika.Message(
        body,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        headers=dict(headers or {}),
    )


async def dead_letter(
    channel: AbstractChannel, topology: Topology, body: bytes, reason: str, *, message_id: str
) -> None:
    """Park a message that cannot be processed, with the reason in a header (confirmed)."""
    exchange = await channel.get_exchange(topology.dead_letter_exchange, ensure=False)
    message = aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        headers={REASON_HEADER: reason[:1000]},
    )
    await exchange.publish(message, routing_key="")
