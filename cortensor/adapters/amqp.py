"""RabbitMQ over aio-pika: topology, confirmed publishing, dead letters."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)
from aio_pika.connection import make_url
from aio_pika.exceptions import AuthenticationError, DeliveryError, ProbableAuthenticationError

from cortensor.adapters.amqp_failover import connect_failover
from cortensor.adapters.interfaces import DeliveryHandler, QueueFull, Unroutable
from cortensor.adapters.topology import QueueSpec, Topology
from cortensor.protocol.dead import FAULT_HEADER, REASON_HEADER, dead_letter_headers
from cortensor.settings import Settings, login_refused, split_urls
from cortensor.tls import amqp_url, client_context

__all__ = ["FAULT_HEADER", "REASON_HEADER"]


RECONNECT_INTERVAL_S = 1.0
"""Pause between a robust connection's tries to reconnect: aio-pika's default of 5 s kept
a router away from RabbitMQ up to 5 s after it was back (docs/design.md, Outages)."""


async def connect(
    url: str, *, ssl_context: ssl.SSLContext | None = None
) -> AbstractRobustConnection:
    """A robust connection that reconnects by itself (over TLS with `ssl_context`); to a
    cluster's nodes in turn when `url` names several, comma-separated."""
    urls = split_urls(url)
    if len(urls) > 1:
        return await connect_failover(urls, ssl_context=ssl_context)
    # What aio_pika.connect_robust does, except that a connection whose first connect
    # fails is closed here: left to the garbage collector, it schedules its close
    # without a loop to run it (a coroutine never awaited).
    connection = aio_pika.RobustConnection(
        make_url(url, reconnect_interval=RECONNECT_INTERVAL_S),
        loop=asyncio.get_running_loop(),
        ssl_context=ssl_context,
        reconnect_interval=RECONNECT_INTERVAL_S,
    )
    try:
        await connection.connect()
    except BaseException:
        await connection.close()
        raise
    return connection


async def connect_as(settings: Settings) -> AbstractRobustConnection:
    """The connection of the principal `settings` describes (its URL, its TLS files;
    amqps:// when TLS is on); BadSetting when RabbitMQ refuses its login."""
    url = amqp_url(settings)
    try:
        return await connect(url, ssl_context=client_context(settings))
    except (AuthenticationError, ProbableAuthenticationError) as exc:
        raise login_refused("RabbitMQ", url, settings.credentials) from exc


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> None:
    """Declare a durable queue and its binding (idempotent)."""
    queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
    await queue.bind(spec.exchange, routing_key=spec.routing_key)


async def apply_topology(
    channel: AbstractChannel, topology: Topology, queues: Sequence[QueueSpec] | None = None
) -> list[str]:
    """Declare every exchange of the topology and its queues (or `queues`); returns what
    it declared."""
    declared = []
    for exchange in topology.exchanges:
        await channel.declare_exchange(exchange.name, ExchangeType(exchange.type), durable=True)
        declared.append(f"exchange {exchange.name} ({exchange.type})")
    for queue in topology.queues if queues is None else queues:
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
    channel: AbstractChannel,
    topology: Topology,
    body: bytes,
    reason: str,
    *,
    message_id: str,
    routing_key: str = "",
    input_at_fault: bool = False,
) -> None:
    """Dead-letter a message that cannot be processed, with the reason in a header
    (confirmed when the channel is), under the routing key it came with (a job's names
    its owner); `input_at_fault` marks a job whose content is to blame."""
    exchange = await channel.get_exchange(topology.dead_letter_exchange, ensure=False)
    message = aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        headers=dead_letter_headers(reason, input_at_fault=input_at_fault),
    )
    await exchange.publish(message, routing_key=routing_key)


class AmqpWorkQueue:
    """A work queue consumed with manual settlement (the router's job queue, or any
    queue of the topology), and the topology's dead-letter exchange: a `JobQueue`.

    The channel's prefetch count bounds the messages in hand at once.
    """

    def __init__(self, channel: AbstractChannel, topology: Topology, queue: str = "") -> None:
        self.channel, self.topology = channel, topology
        self.queue_name = queue or topology.router_queue
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None

    async def consume(self, handler: DeliveryHandler) -> None:
        """Deliver messages to `handler` until `cancel`."""
        self._queue = await self.channel.get_queue(self.queue_name)
        self._tag = await self._queue.consume(handler)

    async def cancel(self) -> None:
        """Stop delivering; messages in hand may still be settled."""
        if self._queue is not None and self._tag is not None:
            await self._queue.cancel(self._tag)
            self._tag = None

    async def dead_letter(
        self,
        body: bytes,
        reason: str,
        *,
        message_id: str,
        routing_key: str = "",
        input_at_fault: bool = False,
    ) -> None:
        """Dead-letter a message with the reason in a header (confirmed when the channel
        is), under the routing key it came with."""
        await dead_letter(
            self.channel,
            self.topology,
            body,
            reason,
            message_id=message_id,
            routing_key=routing_key,
            input_at_fault=input_at_fault,
        )


class AmqpDeadLetters:
    """The dead-letter queue, consumed with manual settlement, and the parked queue's
    exchange: a `DeadLetterQueue`. The channel must have publisher confirms on."""

    def __init__(self, channel: AbstractChannel, topology: Topology) -> None:
        self.channel, self.topology = channel, topology
        self._work = AmqpWorkQueue(channel, topology, topology.dead_letter_queue)

    async def consume(self, handler: DeliveryHandler) -> None:
        """Deliver dead letters to `handler` until `cancel`."""
        await self._work.consume(handler)

    async def cancel(self) -> None:
        """Stop delivering; messages in hand may still be settled."""
        await self._work.cancel()

    async def park(
        self, body: bytes, *, message_id: str, routing_key: str, headers: Mapping[str, Any]
    ) -> None:
        """Keep a message in the parked queue (persistent, confirmed)."""
        exchange = await self.channel.get_exchange(self.topology.parked_exchange, ensure=False)
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id or None,
            headers=dict(headers),
        )
        await exchange.publish(message, routing_key=routing_key)


class AmqpTaskPublisher:
    """Publishes to node queues through the class exchanges: a `TaskPublisher`.

    The channel must have publisher confirms on and raise on returned messages
    (`connection.channel(publisher_confirms=True, on_return_raises=True)`).
    """

    def __init__(self, channel: AbstractChannel, topology: Topology) -> None:
        self.channel, self.topology = channel, topology
        self._exchanges: dict[str, AbstractExchange] = {}

    async def publish(
        self,
        hw_class: str,
        node_id: str,
        body: bytes,
        *,
        headers: Mapping[str, Any],
        message_id: str,
    ) -> None:
        """Publish persistently with `mandatory`; a returned message raises `Unroutable`,
        a nacked one (the node's queue is full) `QueueFull`."""
        exchange = self._exchanges.get(hw_class)
        if exchange is None:
            exchange = await self.channel.get_exchange(self.topology.hw_exchange(hw_class))
            self._exchanges[hw_class] = exchange
        message = aio_pika.Message(
            body,
            headers=dict(headers),
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=message_id,
            message_id=message_id,
        )
        try:
            await exchange.publish(message, routing_key=node_id, mandatory=True)
        except DeliveryError as exc:
            if exc.message is None:  # a nack, not a return: the queue is full
                raise QueueFull(f"node {node_id}'s queue is full") from exc
            raise Unroutable(f"no queue for node {node_id} on {exchange.name}") from exc


async def dead_letter_channel(
    connection: AbstractConnection, topology: Topology, *, prefetch: int
) -> AmqpDeadLetters:
    """The router's dead-letter reader's queue and parking, on a confirmed channel of
    their own (so that dead letters never take the job queue's prefetch)."""
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=prefetch)
    return AmqpDeadLetters(channel, topology)


async def router_channel(
    connection: AbstractRobustConnection, topology: Topology, *, prefetch: int
) -> tuple[AmqpWorkQueue, AmqpTaskPublisher]:
    """The router's job queue and task publisher, on one confirmed channel."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.set_qos(prefetch_count=prefetch)
    return AmqpWorkQueue(channel, topology), AmqpTaskPublisher(channel, topology)
