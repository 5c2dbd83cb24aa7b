"""The router and the guard, running on the in-memory brokers with the real ledger: what
goes in and what comes out, waited for as conditions rather than for fixed times.

Fake nodes are a queue on the twin broker and a heartbeat on the twin NATS; their
"results" are written by the test from the assignments they were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from cortensor.adapters import memory
from cortensor.adapters.amqp import REASON_HEADER
from cortensor.adapters.celery_wire import TASK_RUN_ASSIGNMENTS
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.memory import MemoryBroker, MemoryChannel, MemoryKeys, MemoryNats
from cortensor.adapters.topology import Topology
from cortensor.protocol.probing import PoolProbe, Probe, ProbePool
from cortensor.schemas import (
    Assignment,
    InferenceResult,
    JobReceipt,
    JobRequest,
    NodeHeartbeat,
    Verdict,
    utcnow,
)
from cortensor.services.guard.service import Guard
from cortensor.services.router.probes import ProbeSender
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from tests.conftest import eventually
from tests.node_keys import public_key_of, signed_by

pytestmark = [pytest.mark.postgres]

MODEL = "all-MiniLM-L6-v2"
SPEECH = "whisper-base"
CLIENT = "client-1"
"""The owner the jobs are published by."""


@dataclass
class Network:
    """A router and a guard on twin brokers, sharing one real ledger."""

    settings: Settings
    topology: Topology
    broker: MemoryBroker
    nats: MemoryNats
    router: Router
    guard: Guard
    router_channel: MemoryChannel
    db: asyncpg.Connection
    keys: MemoryKeys
    """The node keys the router and the guard check signatures with."""
    nodes: dict[str, str] = field(default_factory=dict)
    """node id -> its queue."""

    async def join(self, node_id: str, speech: bool = False) -> None:
        """A node announces itself and is admitted as if it had passed its probes; with
        `speech`, it transcribes too (SPEECH)."""
        spec = self.topology.node_queue(node_id, "cpu-int8")
        self.broker.declare_queue(spec)
        self.nodes[node_id] = spec.name
        beat = NodeHeartbeat(
            node_id=node_id,
            hw_class="cpu-int8",
            precision="int8",
            tasks=["embed", "transcribe"] if speech else ["embed"],
            models=[MODEL, SPEECH] if speech else [MODEL],
            capacity=4,
            inflight=0,
            processed=0,
            started_at=utcnow(),
        )
        self.keys.bind(node_id, public_key_of(node_id))
        payload = beat.model_dump_json().encode()
        await self.nats.publish_core(
            self.topology.heartbeat_subject(node_id), payload, headers=signed_by(node_id, payload)
        )
        await eventually(lambda: self._offered(node_id), what=f"{node_id} recorded")
        await self.db.execute(
            """
            INSERT INTO node_standing (node_id, model, trust) VALUES ($1, '', 'active')
            ON CONFLICT (node_id, model) DO UPDATE SET trust = 'active'
            """,
            node_id,
        )
        await eventually(lambda: self._offered(node_id, "active"), what=f"{node_id} admitted")

    def _offered(self, node_id: str, trust: str | None = None) -> bool:
        return any(
            v.node_id == node_id and (trust is None or v.trust == trust)
            for v in self.router.registry.views()
        )

    def submit(self, body: bytes, message_id: str) -> None:
        """Publish a job as a client does."""
        self.broker.publish(
            self.topology.jobs_exchange,
            self.topology.jobs_routing_key(CLIENT),
            body,
            message_id=message_id,
        )

    def sent(self, node_id: str) -> list[dict[str, Any]]:
        """The assignments taken off a node's queue now (probes included)."""
        out = []
        while (delivery := self.broker.get(self.nodes[node_id])) is not None:
            assert delivery.headers["task"] == TASK_RUN_ASSIGNMENTS
            _, kwargs, _ = json.loads(delivery.body)
            out += kwargs["assignments"]
        return out

    async def assignments_of(self, job_id: uuid.UUID, count: int) -> list[Assignment]:
        """The first `count` assignments of a job, read off the nodes' queues."""
        found: list[Assignment] = []

        def collect() -> bool:
            for node in self.nodes:
                found.extend(
                    Assignment.model_validate(a)
                    for a in self.sent(node)
                    if a["job_id"] == str(job_id)
                )
            return len(found) >= count

        await eventually(collect, what=f"{count} assignments of job {job_id}")
        return found

    async def answer(self, assignment: Assignment, vector: list[float], msg_id: str) -> None:
        """Publish a node's result for an assignment, as the node does."""
        result = InferenceResult(
            assignment_id=assignment.assignment_id,
            job_id=assignment.job_id,
            node_id=assignment.node_id,
            task="embed",
            model=MODEL,
            hw_class="cpu-int8",
            precision="int8",
            embeddings=[vector],
        )
        payload = result.model_dump_json().encode()
        await self.nats.publish(
            self.topology.results_subject(str(assignment.job_id), node_id=assignment.node_id),
            payload,
            msg_id=msg_id,
            headers=signed_by(assignment.node_id, payload),
        )

    def verdicts(self, job_id: uuid.UUID) -> list[Verdict]:
        """The verdicts published on a job so far."""
        subject = self.topology.verdicts_subject(str(job_id), owner=CLIENT)
        return [
            Verdict.model_validate_json(data)
            for s, data in self.nats.stored(self.topology.verdicts_stream)
            if s == subject
        ]

    def settled(self) -> bool:
        """The router queue is empty and the router holds nothing unsettled."""
        return self.broker.depth(self.topology.router_queue) == 0 and not (
            self.router_channel.unsettled
        )


@contextlib.asynccontextmanager
async def twin_network(
    ledger_settings: Settings,
    *,
    guard_ledger: type[GuardLedger] = GuardLedger,
    ack_wait_s: float | None = None,
) -> AsyncIterator[tuple[Network, asyncio.Task[None]]]:
    """A router and a guard running on twin brokers over the module's ledger, and the
    guard's task (cancel it to play a kill); `guard_ledger` is the guard's ledger class,
    `ack_wait_s` the guards' consumer's ack wait when not the topology's."""
    settings = ledger_settings.model_copy(
        update={"namespace": f"twin{uuid.uuid4().hex[:8]}", "registry_refresh_s": 0.05}
    )
    topology = Topology(settings.namespace)
    broker, nats = MemoryBroker(topology), MemoryNats(topology)
    if ack_wait_s is not None:
        nats.durables[topology.guard_consumer.durable].ack_wait_s = ack_wait_s
    router_ledger = await RouterLedger.connect(settings.asyncpg_dsn)
    guards_ledger = await guard_ledger.connect(settings.asyncpg_dsn)
    keys = MemoryKeys()
    ports, channel = memory.router_ports(
        router_ledger, broker, nats, topology, keys=keys, prefetch=settings.router_prefetch
    )
    router = Router(settings, ports, seed=7)
    guard = Guard(
        settings, memory.guard_ports(guards_ledger, nats, topology, keys=keys), fetch_wait_s=0.05
    )
    # Each fake node is bound as it joins and heard once: look every unknown id up.
    router.keyring.miss_reload_s = guard.keyring.miss_reload_s = 0.0
    db = await asyncpg.connect(settings.asyncpg_dsn)
    stop = asyncio.Event()
    routing, guarding = asyncio.create_task(router.run(stop)), asyncio.create_task(guard.run(stop))
    try:
        yield Network(settings, topology, broker, nats, router, guard, channel, db, keys), guarding
    finally:
        stop.set()
        results = await asyncio.gather(routing, guarding, return_exceptions=True)
        await db.close()
        await guards_ledger.close()
        await router_ledger.close()
        for result in results:
            if isinstance(result, Exception):
                raise result


@pytest.fixture
async def net(ledger_settings: Settings) -> AsyncIterator[Network]:
    async with twin_network(ledger_settings) as (network, _):
        yield network


def node_ids(prefix: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}-{tag}-{i}" for i in range(n)]


async def test_a_job_in_sends_one_assignment_to_each_of_k_nodes_and_is_acked(
    net: Network,
) -> None:
    nodes = node_ids("route", 3)
    for node in nodes:
        await net.join(node)
    job = JobRequest(inputs=["hello"], redundancy=3, model=MODEL)
    net.submit(job.model_dump_json().encode(), str(job.job_id))
    sent = await net.assignments_of(job.job_id, 3)
    assert sorted(a.node_id for a in sent) == sorted(nodes)
    assert {a.inputs[0] for a in sent} == {"hello"}
    await eventually(net.settled, what="the job acked")


async def test_a_node_holding_a_long_probe_gets_no_short_job_an_idle_node_can_take(
    net: Network,
) -> None:
    # A probe made from 27 s of speech holds its node 13.6 s (0.5 s per second of audio):
    # an embedding with 5 s to live must not queue behind it while another node is idle.
    busy, idle = node_ids("queue", 2)
    for node in (busy, idle):
        await net.join(node, speech=True)
    router = net.router
    router.settings = router.settings.model_copy(
        update={"node_ttl_s": 1e9, "active_probe_interval_s": 0.05}
    )
    speech = Probe(
        task="transcribe",
        model=SPEECH,
        audio="UklGRg==",
        language="en",
        reference={"text": "hi", "language": "en", "duration_s": 27.19, "segments": []},
    )
    prober = ProbeSender(router.settings, router.rng, router.backlog)
    prober.pool = ProbePool([speech])
    prober.pool.sent(PoolProbe.prepared(speech), idle)  # only `busy` may get it
    router.prober = prober
    held: list[dict[str, Any]] = []

    def probed() -> bool:
        held.extend(net.sent(busy))
        return bool(held)

    await eventually(probed, what="the probe sent")
    [probe] = held
    assert probe["task"] == "transcribe"
    for i in range(6):
        job = JobRequest(inputs=[f"short {i}"], redundancy=1, model=MODEL, deadline_s=5.0)
        net.submit(job.model_dump_json().encode(), str(job.job_id))
        [sent] = await net.assignments_of(job.job_id, 1)
        assert sent.node_id == idle
    await eventually(net.settled, what="the jobs acked")


async def test_a_job_delivered_twice_is_recorded_once_and_its_assignments_resent(
    net: Network,
) -> None:
    [node] = node_ids("dup", 1)
    await net.join(node)
    job = JobRequest(inputs=["once"], redundancy=1, model=MODEL)
    net.submit(job.model_dump_json().encode(), str(job.job_id))
    [first] = await net.assignments_of(job.job_id, 1)
    net.submit(job.model_dump_json().encode(), str(job.job_id))
    [again] = await net.assignments_of(job.job_id, 1)
    assert again.assignment_id == first.assignment_id
    assert again.deadline_at == first.deadline_at
    await eventually(net.settled, what="both deliveries acked")
    rows = await net.db.fetchval("SELECT count(*) FROM jobs WHERE job_id = $1", job.job_id)
    assert rows == 1
    assignments = await net.db.fetchval(
        "SELECT count(*) FROM assignments WHERE job_id = $1", job.job_id
    )
    assert assignments == 1


async def test_a_recorded_job_gets_one_receipt_and_a_rejected_job_none(net: Network) -> None:
    job = JobRequest(inputs=["no node serves it yet"], redundancy=1, model=MODEL)
    for _ in range(2):  # delivered twice: one receipt in the stream
        net.submit(job.model_dump_json().encode(), str(job.job_id))
    bad_id = uuid.uuid4()
    net.submit(json.dumps({"job_id": str(bad_id), "task": "juggle"}).encode(), str(bad_id))
    await eventually(lambda: net.verdicts(bad_id), what="the bad job rejected")
    await eventually(net.settled, what="the jobs acked")

    def receipts(job_id: uuid.UUID) -> list[JobReceipt]:
        subject = net.topology.receipt_subject(str(job_id), owner=CLIENT)
        stored = net.nats.stored(net.topology.verdicts_stream)
        return [JobReceipt.model_validate_json(data) for s, data in stored if s == subject]

    # Published off the jobs' path: waited for, not assumed.
    [receipt] = await eventually(lambda: receipts(job.job_id), what="the job's receipt")
    assert (receipt.job_id, receipt.owner) == (job.job_id, CLIENT)
    assert net.verdicts(job.job_id) == []  # waiting for a node: accepted, not decided
    assert receipts(bad_id) == []
    assert net.verdicts(bad_id)[0].status == "rejected"


async def test_a_job_decided_before_its_receipt_falls_due_gets_none(net: Network) -> None:
    node = node_ids("quick", 1)[0]
    await net.join(node)
    quick = JobRequest(inputs=["decided at once"], redundancy=1, model=MODEL)
    net.submit(quick.model_dump_json().encode(), str(quick.job_id))
    [sent] = await net.assignments_of(quick.job_id, 1)
    await net.answer(sent, [1.0] + [0.0] * 383, msg_id=str(sent.assignment_id))
    [verdict] = await eventually(lambda: net.verdicts(quick.job_id), what="a verdict")
    assert verdict.status == "verified"
    slow = JobRequest(inputs=["left unanswered"], redundancy=1, model=MODEL)
    net.submit(slow.model_dump_json().encode(), str(slow.job_id))
    stored = lambda: net.nats.stored(net.topology.verdicts_stream)  # noqa: E731
    accepted = {
        job.job_id: net.topology.receipt_subject(str(job.job_id), owner=CLIENT)
        for job in (quick, slow)
    }
    await eventually(
        lambda: [s for s, _ in stored() if s == accepted[slow.job_id]],
        what="the undecided job's receipt",
    )
    assert [s for s, _ in stored() if s == accepted[quick.job_id]] == []


async def test_a_job_that_is_not_json_is_dead_lettered_with_its_reason(net: Network) -> None:
    net.submit(b"{not json", "garbage-1")
    dead = await eventually(
        lambda: net.broker.get(net.topology.dead_letter_queue), what="a dead letter"
    )
    assert dead.body == b"{not json"
    assert dead.message_id == "garbage-1"
    assert dead.headers[REASON_HEADER]
    await eventually(net.settled, what="the bad job acked")


async def test_an_unroutable_assignment_keeps_its_node_and_is_not_recorded_as_sent(
    net: Network,
) -> None:
    """A returned message is no proof that a node is gone (a restarting broker returns
    messages while it loads its queues): the node stays offered, its heartbeats decide,
    and the assignment, never confirmed, is excused and sent again rather than charged."""
    [node] = node_ids("gone", 1)
    await net.join(node)
    net.broker.delete_queue(net.nodes[node])
    job = JobRequest(inputs=["nobody home"], redundancy=1, model=MODEL)
    net.submit(job.model_dump_json().encode(), str(job.job_id))
    await eventually(net.settled, what="the job acked")
    assert net._offered(node)
    rows = await net.db.fetch("SELECT sent_at FROM assignments WHERE job_id = $1", job.job_id)
    assert [r["sent_at"] for r in rows] == [None]


async def test_results_in_make_one_verdict_and_a_duplicate_delivery_changes_nothing(
    net: Network,
) -> None:
    nodes = node_ids("judge", 3)
    for node in nodes:
        await net.join(node)
    job = JobRequest(inputs=["agree"], redundancy=3, model=MODEL)
    net.submit(job.model_dump_json().encode(), str(job.job_id))
    sent = await net.assignments_of(job.job_id, 3)
    vector = [1.0] + [0.0] * 383
    for a in sent:
        await net.answer(a, vector, msg_id=str(a.assignment_id))
    [verdict] = await eventually(lambda: net.verdicts(job.job_id), what="a verdict")
    assert verdict.status == "verified"
    assert sorted(verdict.agreeing) == sorted(nodes)
    # The same results again under new message ids (a node that published twice, or a
    # stream redelivery): stored by the stream, ignored by the guard.
    for a in sent:
        await net.answer(a, vector, msg_id=f"again-{a.assignment_id}")
    durable = net.topology.guard_consumer.durable
    await eventually(lambda: net.nats.backlog(durable) == 0, what="every result acked")
    assert net.verdicts(job.job_id) == [verdict]
    results = await net.db.fetchval("SELECT count(*) FROM results WHERE job_id = $1", job.job_id)
    assert results == 3


async def test_unsigned_misaddressed_and_borrowed_results_are_refused_and_charge_nobody(
    net: Network,
) -> None:
    nodes = node_ids("sign", 3)
    for node in nodes:
        await net.join(node)
    job = JobRequest(inputs=["signed"], redundancy=3, model=MODEL)
    net.submit(job.model_dump_json().encode(), str(job.job_id))
    sent = {a.node_id: a for a in await net.assignments_of(job.job_id, 3)}
    first, second, _ = nodes
    wrong = [0.0, 1.0] + [0.0] * 382

    def forged(assignment: Assignment, node_id: str) -> bytes:
        return (
            InferenceResult(
                assignment_id=assignment.assignment_id,
                job_id=assignment.job_id,
                node_id=node_id,
                task="embed",
                model=MODEL,
                hw_class="cpu-int8",
                precision="int8",
                embeddings=[wrong],
            )
            .model_dump_json()
            .encode()
        )

    subject = net.topology.results_subject
    unsigned = forged(sent[first], first)
    await net.nats.publish(subject(str(job.job_id), node_id=first), unsigned, msg_id="unsigned")
    # The first node's signature on a result in the second node's name and subject.
    theirs = forged(sent[second], second)
    await net.nats.publish(
        subject(str(job.job_id), node_id=second),
        theirs,
        msg_id="impersonated",
        headers=signed_by(first, theirs),
    )
    # A signed result moved to another job's subject.
    moved = forged(sent[first], first)
    await net.nats.publish(
        subject(str(uuid.uuid4()), node_id=first),
        moved,
        msg_id="moved",
        headers=signed_by(first, moved),
    )
    # Signed by its own node, on its own subject, but for another node's assignment.
    borrowed = forged(sent[second], first)
    await net.nats.publish(
        subject(str(job.job_id), node_id=first),
        borrowed,
        msg_id="borrowed",
        headers=signed_by(first, borrowed),
    )
    durable = net.topology.guard_consumer.durable
    await eventually(lambda: net.nats.backlog(durable) == 0, what="every forgery settled")
    assert await net.db.fetchval("SELECT count(*) FROM results WHERE job_id = $1", job.job_id) == 0

    vector = [1.0] + [0.0] * 383
    for a in sent.values():
        await net.answer(a, vector, msg_id=str(a.assignment_id))
    [verdict] = await eventually(lambda: net.verdicts(job.job_id), what="a verdict")
    assert verdict.status == "verified"
    assert sorted(verdict.agreeing) == sorted(nodes)
    events = await net.db.fetch(
        "SELECT node_id, kind FROM reputation_events WHERE job_id = $1", job.job_id
    )
    assert sorted((e["node_id"], e["kind"]) for e in events) == [(n, "agreed") for n in nodes]
    await net.guard.keyring.flush()
    assert {k: n for k, n in net.keys.refusals.items() if k[1] in nodes} == {
        ("guard", first, "unsigned"): 1,
        ("guard", second, "bad signature"): 1,
        ("guard", first, "unreadable"): 1,
        ("guard", first, "not its assignment"): 1,
    }


async def test_unsigned_and_replayed_heartbeats_are_dropped_and_counted(net: Network) -> None:
    [node] = node_ids("beat", 1)
    net.keys.bind(node, public_key_of(node))
    subject = net.topology.heartbeat_subject(node)

    def beat(created_at: Any) -> bytes:
        return (
            NodeHeartbeat(
                node_id=node,
                hw_class="cpu-int8",
                precision="int8",
                tasks=["embed"],
                models=[MODEL],
                capacity=4,
                inflight=0,
                processed=0,
                started_at=utcnow(),
                created_at=created_at,
            )
            .model_dump_json()
            .encode()
        )

    now = utcnow()
    await net.nats.publish_core(subject, beat(now))
    old = beat(now - timedelta(minutes=5))
    await net.nats.publish_core(subject, old, headers=signed_by(node, old))
    ahead = beat(now + timedelta(minutes=5))
    await net.nats.publish_core(subject, ahead, headers=signed_by(node, ahead))
    await net.nats.publish_core(subject, beat(now), headers=signed_by("someone-else", beat(now)))

    def counted() -> dict[str, int]:
        return {k[2]: n for k, n in net.keys.refusals.items() if k[:2] == ("router", node)}

    expected = {
        "unsigned": 1,
        "stale heartbeat": 1,
        "heartbeat from the future": 1,
        "bad signature": 1,
    }
    await eventually(lambda: counted() == expected, what="four heartbeats refused")
    assert not any(v.node_id == node for v in net.router.registry.views())
    fresh = beat(utcnow())
    await net.nats.publish_core(subject, fresh, headers=signed_by(node, fresh))
    await eventually(lambda: net._offered(node), what="the signed heartbeat heard")
