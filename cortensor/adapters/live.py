"""The real adapters of each service, connected from the settings and closed after use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from nats.aio.client import Client as NATS

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.keys import NodeKeys
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.ports import GuardPorts, RouterPorts
from cortensor.adapters.servers import reach
from cortensor.adapters.topology import Topology
from cortensor.protocol.outages import OutageWatch
from cortensor.schemas import utcnow
from cortensor.settings import Settings

DEAD_PREFETCH = 16
"""Dead letters a router handles at once: few ever arrive, and one that waits for the
ledger to come back holds its place."""


def _nats_watched(
    settings: Settings, name: str, watch: OutageWatch
) -> Callable[[], Awaitable[NATS]]:
    """A NATS connect whose losses and reconnections are reported to `watch`."""

    async def lost() -> None:
        watch.lost("nats")

    async def back() -> None:
        watch.restored("nats")

    return lambda: jetstream.connect_as(
        settings, name=name, disconnected_cb=lost, reconnected_cb=back
    )


def _amqp_watched(connection: Any, watch: OutageWatch) -> None:
    """aio-pika's callbacks on a robust connection, reporting to `watch`."""
    connection.close_callbacks.add(lambda *_: watch.lost("rabbitmq"))
    connection.reconnect_callbacks.add(lambda *_: watch.restored("rabbitmq"))


@asynccontextmanager
async def router_ports(settings: Settings, *, name: str = "router") -> AsyncIterator[RouterPorts]:
    """A router's ledger pool, RabbitMQ channel and NATS connection, closed on exit
    (NATS first, so that no heartbeat reaches a closed ledger)."""
    topology = Topology(settings.namespace)
    watch = OutageWatch(utcnow)
    ledger = await reach("postgres", lambda: RouterLedger.connect(settings.asyncpg_dsn))
    try:
        connection = await reach("rabbitmq", lambda: amqp.connect_as(settings))
        _amqp_watched(connection, watch)
        try:
            jobs, tasks = await amqp.router_channel(
                connection, topology, prefetch=settings.router_prefetch
            )
            dead = await amqp.dead_letter_channel(connection, topology, prefetch=DEAD_PREFETCH)
            nc = await reach("nats", _nats_watched(settings, name, watch))
            try:
                yield RouterPorts(
                    ledger=ledger,
                    keys=NodeKeys(ledger.pool),
                    jobs=jobs,
                    tasks=tasks,
                    signals=jetstream.NatsSignals(nc),
                    verdicts=jetstream.JetStreamPublisher(nc.jetstream()),
                    dead=dead,
                    outages=watch,
                    results=jetstream.ResultsBacklog(
                        nc.jetstream(),
                        stream=topology.guard_consumer.stream,
                        durable=topology.guard_consumer.durable,
                    ),
                )
            finally:
                await nc.drain()
        finally:
            await connection.close()
    finally:
        await ledger.close()


@asynccontextmanager
async def guard_ports(settings: Settings, *, name: str = "guard") -> AsyncIterator[GuardPorts]:
    """A guard's ledger pool and its fetcher on the shared durable results consumer."""
    consumer = Topology(settings.namespace).guard_consumer
    watch = OutageWatch(utcnow)
    ledger = await reach("postgres", lambda: GuardLedger.connect(settings.asyncpg_dsn, max_size=8))
    try:
        nc = await reach("nats", _nats_watched(settings, name, watch))
        try:
            js = nc.jetstream()
            results = await jetstream.PullConsumer.bind(
                js, stream=consumer.stream, durable=consumer.durable
            )
            yield GuardPorts(
                ledger=ledger,
                keys=NodeKeys(ledger.pool),
                results=results,
                verdicts=jetstream.JetStreamPublisher(js),
                outages=watch,
            )
        finally:
            await nc.drain()
    finally:
        await ledger.close()
