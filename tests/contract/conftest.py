"""Each contract test runs twice: against the real server and against the in-memory twin
(tests/contract/sides.py holds the harness). The real half gets a namespace of its own
per test, on the real RabbitMQ or NATS, or a ledger database of its module's own on the
real PostgreSQL, and carries that server's marker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest

from cortensor.adapters import jetstream
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.adapters.topology import Topology
from cortensor.settings import Settings
from tests.conftest import make_settings, role_dsn
from tests.contract.sides import (
    AmqpSide,
    LedgerSide,
    MemoryAmqp,
    MemoryNatsSide,
    NatsSide,
    PostgresLedger,
    RealAmqp,
    RealNats,
    TwinLedger,
)


@pytest.fixture(params=["memory", pytest.param("real", marks=pytest.mark.rabbitmq)])
async def rabbit(request: pytest.FixtureRequest) -> AsyncIterator[AmqpSide]:
    """RabbitMQ, real (a namespace of this test's own) or in memory."""
    if request.param == "memory":
        yield MemoryAmqp()
        return
    settings = make_settings()
    await setup_brokers(settings)
    connection = await aio_pika.connect(settings.amqp_url)
    side = RealAmqp(settings, connection)
    try:
        await side.start()
        yield side
    finally:
        await side.close()
        await connection.close()
        await teardown_brokers(settings, side.nodes)


@pytest.fixture(params=["memory", pytest.param("real", marks=pytest.mark.nats)])
async def nats_side(request: pytest.FixtureRequest) -> AsyncIterator[NatsSide]:
    """NATS with JetStream, real (streams of this test's own) or in memory."""
    if request.param == "memory":
        yield MemoryNatsSide()
        return
    settings = make_settings()
    topology = Topology(settings.namespace)
    nc = await jetstream.connect(settings.nats_url, name="contract")
    js = nc.jetstream()
    await jetstream.apply_streams(js, topology)
    side = RealNats(settings, nc)
    try:
        yield side
    finally:
        await side.close()
        for stream in topology.streams:
            await js.delete_stream(stream.name)
        await nc.drain()


@pytest.fixture(params=["memory", pytest.param("real", marks=pytest.mark.postgres)])
async def ledger_side(request: pytest.FixtureRequest) -> AsyncIterator[LedgerSide]:
    """The ledger, real (a migrated database of this module's own) or in memory."""
    if request.param == "memory":
        yield TwinLedger()
        return
    settings: Settings = request.getfixturevalue("ledger_settings")
    router = await RouterLedger.connect(role_dsn(settings, "router"))
    guard = await GuardLedger.connect(role_dsn(settings, "guard"))
    db = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        yield PostgresLedger(router, guard, db)
    finally:
        await db.close()
        await guard.close()
        await router.close()
