"""The real adapters of each service, connected from the settings and closed after use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.keys import NodeKeys
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.ports import GuardPorts, RouterPorts
from cortensor.adapters.topology import Topology
from cortensor.settings import Settings


@asynccontextmanager
async def router_ports(settings: Settings, *, name: str = "router") -> AsyncIterator[RouterPorts]:
    """A router's ledger pool, RabbitMQ channel and NATS connection, closed on exit
    (NATS first, so that no heartbeat reaches a closed ledger)."""
    topology = Topology(settings.namespace)
    ledger = await RouterLedger.connect(settings.asyncpg_dsn)
    try:
        connection = await amqp.connect_as(settings)
        try:
            jobs, tasks = await amqp.router_channel(
                connection, topology, prefetch=settings.router_prefetch
            )
            nc = await jetstream.connect_as(settings, name=name)
            try:
                yield RouterPorts(
                    ledger=ledger,
                    keys=NodeKeys(ledger.pool),
                    jobs=jobs,
                    tasks=tasks,
                    signals=jetstream.NatsSignals(nc),
                    verdicts=jetstream.JetStreamPublisher(nc.jetstream()),
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
    ledger = await GuardLedger.connect(settings.asyncpg_dsn, max_size=8)
    try:
        nc = await jetstream.connect_as(settings, name=name)
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
            )
        finally:
            await nc.drain()
    finally:
        await ledger.close()
