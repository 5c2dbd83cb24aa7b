"""The two sides of every contract test, real server and in-memory twin, behind one
harness (`AmqpSide`, `NatsSide`): the adapters under test (the interfaces of
cortensor.adapters.interfaces) and the few server-side moves a test needs (declare a
node queue, publish a job as a client does, read a queue, open a durable consumer);
and the two ledgers, PostgreSQL and `MemoryLedger`, behind `LedgerSide`."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.interfaces import (
    DeadLetterQueue,
    JobQueue,
    SignalBus,
    StreamConsumer,
    StreamPublisher,
    TaskPublisher,
)
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.interfaces import GuardBook, RouterBook
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.ledger.store import Ledger
from cortensor.adapters.memory import (
    MemoryBroker,
    MemoryDeadLetters,
    MemoryLedger,
    MemoryNats,
    MemoryPullConsumer,
    MemorySignals,
    MemoryStreamPublisher,
    MemoryTaskPublisher,
    MemoryWorkQueue,
)
from cortensor.adapters.topology import QueueSpec, Topology
from cortensor.protocol.reputation import Standing
from cortensor.settings import Settings
from tests.conftest import make_settings

CLIENT = "client-1"
"""The client whose jobs `publish_job` publishes."""


def _with(spec: QueueSpec, arguments: Mapping[str, Any] | None) -> QueueSpec:
    """`spec` with `arguments` over its own."""
    return replace(spec, arguments={**spec.arguments, **(arguments or {})})


@dataclass(frozen=True)
class Got:
    """A message read off a queue by the test."""

    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    routing_key: str | None


Closer = Callable[[], Awaitable[None]]


class AmqpSide(ABC):
    """What a contract test does with RabbitMQ, on either side."""

    topology: Topology
    tasks: TaskPublisher
    quiet_s: float
    """How long a test watches for a message that must not come: a real broker's
    delivery takes a round trip, the twin's a few turns of the event loop."""

    @abstractmethod
    async def work_queue(self, *, prefetch: int = 0, queue: str = "") -> tuple[JobQueue, Closer]:
        """A consumer of `queue` (the router queue by default) on a channel of its own,
        and how to close that channel (unsettled messages go back)."""
        ...

    @abstractmethod
    async def dead_letters(self, *, prefetch: int = 0) -> tuple[DeadLetterQueue, Closer]:
        """A reader of the dead-letter queue (and the parked queue's publisher) on a
        channel of its own, and how to close that channel."""
        ...

    @abstractmethod
    async def declare_node_queue(
        self, node_id: str, hw_class: str, arguments: Mapping[str, Any] | None = None
    ) -> str:
        """A node's queue, bound to its class exchange (with `arguments` over the
        topology's); returns its name."""
        ...

    @abstractmethod
    async def publish_job(self, body: bytes, *, message_id: str) -> None:
        """Publish to the jobs exchange, as client `CLIENT` does."""
        ...

    @abstractmethod
    async def declare_queue(self, spec: QueueSpec) -> None:
        """A queue of the test's own, bound as `spec` says (deleted with the namespace)."""
        ...

    @abstractmethod
    async def publish(
        self, exchange: str, routing_key: str, body: bytes, *, message_id: str
    ) -> None:
        """Publish, confirmed; a message that no queue takes is dropped."""
        ...

    @abstractmethod
    async def get(self, queue: str) -> Got | None:
        """The next ready message of `queue`, taken off it; None when it is empty."""
        ...


class RealAmqp(AmqpSide):
    quiet_s = 0.3

    def __init__(self, settings: Settings, connection: aio_pika.abc.AbstractConnection) -> None:
        self.settings = settings
        self.topology = Topology(settings.namespace)
        self.connection = connection
        self.nodes: list[tuple[str, str]] = []
        self.queues: list[str] = []
        self._closers: list[Closer] = []

    async def start(self) -> None:
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        self.tasks = amqp.AmqpTaskPublisher(self.channel, self.topology)

    async def work_queue(self, *, prefetch: int = 0, queue: str = "") -> tuple[JobQueue, Closer]:
        connection = await aio_pika.connect(self.settings.amqp_url)
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=prefetch)

        async def close() -> None:
            if not connection.is_closed:
                await connection.close()

        self._closers.append(close)
        return amqp.AmqpWorkQueue(channel, self.topology, queue), close

    async def dead_letters(self, *, prefetch: int = 0) -> tuple[DeadLetterQueue, Closer]:
        connection = await aio_pika.connect(self.settings.amqp_url)

        async def close() -> None:
            if not connection.is_closed:
                await connection.close()

        self._closers.append(close)
        return await amqp.dead_letter_channel(connection, self.topology, prefetch=prefetch), close

    async def declare_node_queue(
        self, node_id: str, hw_class: str, arguments: Mapping[str, Any] | None = None
    ) -> str:
        spec = _with(self.topology.node_queue(node_id, hw_class), arguments)
        await amqp.declare_queue(self.channel, spec)
        self.nodes.append((node_id, hw_class))
        return spec.name

    async def publish_job(self, body: bytes, *, message_id: str) -> None:
        exchange = await self.channel.get_exchange(self.topology.jobs_exchange)
        await exchange.publish(
            amqp.json_message(body, message_id=message_id),
            routing_key=self.topology.jobs_routing_key(CLIENT),
        )

    async def declare_queue(self, spec: QueueSpec) -> None:
        await amqp.declare_queue(self.channel, spec)
        self.queues.append(spec.name)

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, *, message_id: str
    ) -> None:
        target = await self.channel.get_exchange(exchange)
        await target.publish(
            amqp.json_message(body, message_id=message_id),
            routing_key=routing_key,
            mandatory=False,
        )

    async def get(self, queue: str) -> Got | None:
        message = await (await self.channel.get_queue(queue)).get(no_ack=True, fail=False)
        if message is None:
            return None
        return Got(message.body, dict(message.headers), message.message_id, message.routing_key)

    async def close(self) -> None:
        for close in self._closers:
            await close()
        for name in self.queues:
            await self.channel.queue_delete(name)


class MemoryAmqp(AmqpSide):
    quiet_s = 0.02

    def __init__(self) -> None:
        self.topology = Topology(make_settings().namespace)
        self.broker = MemoryBroker(self.topology)
        self.tasks = MemoryTaskPublisher(self.broker, self.topology)

    async def work_queue(self, *, prefetch: int = 0, queue: str = "") -> tuple[JobQueue, Closer]:
        channel = self.broker.channel(prefetch)

        async def close() -> None:
            channel.close()

        return MemoryWorkQueue(channel, self.topology, queue), close

    async def dead_letters(self, *, prefetch: int = 0) -> tuple[DeadLetterQueue, Closer]:
        channel = self.broker.channel(prefetch)

        async def close() -> None:
            channel.close()

        return MemoryDeadLetters(channel, self.topology), close

    async def declare_node_queue(
        self, node_id: str, hw_class: str, arguments: Mapping[str, Any] | None = None
    ) -> str:
        spec = _with(self.topology.node_queue(node_id, hw_class), arguments)
        self.broker.declare_queue(spec)
        return spec.name

    async def publish_job(self, body: bytes, *, message_id: str) -> None:
        await self.publish(
            self.topology.jobs_exchange,
            self.topology.jobs_routing_key(CLIENT),
            body,
            message_id=message_id,
        )

    async def declare_queue(self, spec: QueueSpec) -> None:
        self.broker.declare_queue(spec)

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, *, message_id: str
    ) -> None:
        self.broker.publish(exchange, routing_key, body, message_id=message_id)

    async def get(self, queue: str) -> Got | None:
        delivery = self.broker.get(queue)
        if delivery is None:
            return None
        return Got(delivery.body, dict(delivery.headers), delivery.message_id, delivery.routing_key)


class NatsSide(ABC):
    """What a contract test does with NATS, on either side."""

    topology: Topology
    publisher: StreamPublisher
    ack_wait_s: float
    """The ack wait of the consumers `durable` opens: short, so that tests of
    redelivery stay short."""

    @abstractmethod
    async def durable(self, name: str, *, max_ack_pending: int = 1000) -> None:
        """A durable pull consumer on the results stream with `ack_wait_s`."""
        ...

    @abstractmethod
    async def fetcher(self, durable: str) -> StreamConsumer:
        """A new fetcher on `durable` (each one a guard of its own)."""
        ...

    @abstractmethod
    async def signals(self) -> SignalBus:
        """A new connection's core publish/subscribe."""
        ...

    @abstractmethod
    async def stored(self, stream: str) -> int:
        """How many messages `stream` holds."""
        ...


class RealNats(NatsSide):
    ack_wait_s = 1.0

    def __init__(self, settings: Settings, nc: NATS) -> None:
        self.settings, self.nc = settings, nc
        self.topology = Topology(settings.namespace)
        self.js = nc.jetstream()
        self.publisher = jetstream.JetStreamPublisher(self.js)
        self._clients: list[NATS] = []
        self._fetchers: list[StreamConsumer] = []

    async def durable(self, name: str, *, max_ack_pending: int = 1000) -> None:
        await self.js.add_consumer(
            self.topology.results_stream,
            ConsumerConfig(
                durable_name=name,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait_s,
                max_ack_pending=max_ack_pending,
            ),
        )

    async def fetcher(self, durable: str) -> StreamConsumer:
        fetcher = await jetstream.PullConsumer.bind(
            self.js, stream=self.topology.results_stream, durable=durable
        )
        self._fetchers.append(fetcher)
        return fetcher

    async def signals(self) -> SignalBus:
        nc = await jetstream.connect(self.settings.nats_url, name="contract")
        self._clients.append(nc)
        return jetstream.NatsSignals(nc)

    async def stored(self, stream: str) -> int:
        return int((await self.js.stream_info(stream)).state.messages)

    async def close(self) -> None:
        for fetcher in self._fetchers:
            with contextlib.suppress(Exception):
                await fetcher.close()
        for nc in self._clients:
            await nc.drain()


class MemoryNatsSide(NatsSide):
    ack_wait_s = 0.1

    def __init__(self) -> None:
        self.topology = Topology(make_settings().namespace)
        self.nats = MemoryNats(self.topology)
        self.publisher = MemoryStreamPublisher(self.nats)

    async def durable(self, name: str, *, max_ack_pending: int = 1000) -> None:
        self.nats.add_consumer(
            self.topology.results_stream,
            name,
            ack_wait_s=self.ack_wait_s,
            max_ack_pending=max_ack_pending,
        )

    async def fetcher(self, durable: str) -> StreamConsumer:
        return MemoryPullConsumer(self.nats, durable)

    async def signals(self) -> SignalBus:
        return MemorySignals(self.nats)

    async def stored(self, stream: str) -> int:
        return len(self.nats.stored(stream))


# -- the ledger -------------------------------------------------------------------------


class LedgerSide(ABC):
    """What a ledger contract test does, on PostgreSQL or on the twin: the router's and
    the guard's ledgers under test, and a few reads of what they wrote."""

    router: RouterBook
    guard: GuardBook

    @abstractmethod
    async def add_events(self, job_id: UUID, events: Sequence[tuple[str, UUID, str]]) -> None:
        """Append reputation events (node, assignment, kind), as a guard's verdict does."""
        ...

    @abstractmethod
    async def standing(self, node_id: str, model: str = "") -> Standing | None:
        """A node's stored standing (the trigger's fold, or the twin's)."""
        ...

    @abstractmethod
    async def set_trust(self, node_id: str, trust: str) -> None:
        """Admit (or quarantine) a node outright, as an operator would."""
        ...

    @abstractmethod
    async def events(self, job_id: UUID) -> list[tuple[str, str]]:
        """(node, kind) of a job's reputation events, in order."""
        ...

    @abstractmethod
    async def history(self, node_id: str, model: str = "") -> list[tuple[str, float, bool]]:
        """(kind, time in epoch seconds, probe) of a node's events, in the order folded;
        with `model`, those of that model's jobs only."""
        ...

    @abstractmethod
    async def results(self, job_id: UUID) -> int:
        """How many results of a job are stored (counted or not)."""
        ...

    @abstractmethod
    async def arrivals(self, job_id: UUID) -> list[str]:
        """The nodes whose results of a job are stored, in the order replicas are read."""
        ...

    @abstractmethod
    async def job(self, job_id: UUID) -> tuple[str, int, bool]:
        """A job's status, redundancy and unchecked flag."""
        ...

    @abstractmethod
    async def owner(self, job_id: UUID) -> str:
        """The owner recorded for a job."""
        ...


class PostgresLedger(LedgerSide):
    """The PostgreSQL ledgers, and a connection of the test's own to read what they wrote."""

    def __init__(self, router: RouterLedger, guard: GuardLedger, db: asyncpg.Connection) -> None:
        self.router, self.guard, self.db = router, guard, db

    async def add_events(self, job_id: UUID, events: Sequence[tuple[str, UUID, str]]) -> None:
        async with self.guard.pool.acquire() as conn, conn.transaction():
            await Ledger.add_events(conn, job_id, events)

    async def standing(self, node_id: str, model: str = "") -> Standing | None:
        row = await self.db.fetchrow(
            "SELECT * FROM node_standing WHERE node_id = $1 AND model = $2", node_id, model
        )
        if row is None:
            return None
        return Standing(**{f.name: row[f.name] for f in fields(Standing)})

    async def set_trust(self, node_id: str, trust: str) -> None:
        await self.db.execute(
            """
            INSERT INTO node_standing (node_id, model, trust) VALUES ($1, '', $2)
            ON CONFLICT (node_id, model) DO UPDATE SET trust = $2
            """,
            node_id,
            trust,
        )

    async def events(self, job_id: UUID) -> list[tuple[str, str]]:
        rows = await self.db.fetch(
            "SELECT node_id, kind FROM reputation_events WHERE job_id = $1 ORDER BY event_id",
            job_id,
        )
        return [(r["node_id"], r["kind"]) for r in rows]

    async def history(self, node_id: str, model: str = "") -> list[tuple[str, float, bool]]:
        rows = await self.db.fetch(
            """
            SELECT kind, extract(epoch FROM created_at)::float8 AS at, probe
            FROM reputation_events WHERE node_id = $1 AND ($2 = '' OR model = $2)
            ORDER BY node_seq
            """,
            node_id,
            model,
        )
        return [(r["kind"], r["at"], r["probe"]) for r in rows]

    async def results(self, job_id: UUID) -> int:
        sql = "SELECT count(*) FROM results WHERE job_id = $1"
        count: int = await self.db.fetchval(sql, job_id)
        return count

    async def arrivals(self, job_id: UUID) -> list[str]:
        rows = await self.db.fetch(
            """
            SELECT a.node_id FROM assignments a JOIN results r USING (assignment_id)
            WHERE a.job_id = $1 ORDER BY r.seq, a.assignment_id
            """,
            job_id,
        )
        return [r["node_id"] for r in rows]

    async def job(self, job_id: UUID) -> tuple[str, int, bool]:
        row = await self.db.fetchrow(
            "SELECT status, redundancy, unchecked FROM jobs WHERE job_id = $1", job_id
        )
        return row["status"], row["redundancy"], row["unchecked"]

    async def owner(self, job_id: UUID) -> str:
        owner: str = await self.db.fetchval("SELECT owner FROM jobs WHERE job_id = $1", job_id)
        return owner


class TwinLedger(LedgerSide):
    """One MemoryLedger as both the router's and the guard's ledger."""

    def __init__(self, ledger: MemoryLedger | None = None) -> None:
        self.ledger = ledger or MemoryLedger()
        self.router = self.guard = self.ledger

    async def add_events(self, job_id: UUID, events: Sequence[tuple[str, UUID, str]]) -> None:
        self.ledger.tables.add_events(job_id, [(n, str(a), k) for n, a, k in events])

    async def standing(self, node_id: str, model: str = "") -> Standing | None:
        return self.ledger.standing(node_id, model)

    async def set_trust(self, node_id: str, trust: str) -> None:
        assert trust in ("probation", "active", "quarantined")
        self.ledger.set_trust(node_id, trust)  # type: ignore[arg-type]

    async def events(self, job_id: UUID) -> list[tuple[str, str]]:
        return [(e.node_id, e.kind) for e in self.ledger.tables.events if e.job_id == job_id]

    async def history(self, node_id: str, model: str = "") -> list[tuple[str, float, bool]]:
        return [
            (e.kind, e.at, e.probe)
            for e in self.ledger.tables.events
            if e.node_id == node_id and model in ("", e.model)
        ]

    async def results(self, job_id: UUID) -> int:
        return sum(r.job_id == job_id for r in self.ledger.tables.results.values())

    async def arrivals(self, job_id: UUID) -> list[str]:
        tables = self.ledger.tables
        held = [a for a in tables.assignments.values() if a.job_id == job_id]
        return [a.node_id for a in tables.ordered(held) if tables.result_of(a.assignment_id)]

    async def job(self, job_id: UUID) -> tuple[str, int, bool]:
        row = self.ledger.tables.jobs[job_id]
        return row.status, row.redundancy, row.unchecked

    async def owner(self, job_id: UUID) -> str:
        return self.ledger.tables.jobs[job_id].spec.owner
