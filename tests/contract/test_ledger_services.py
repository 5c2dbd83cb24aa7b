"""The router and the guard on nothing but twins: MemoryBroker, MemoryNats and one
MemoryLedger shared by both. No server is needed, and each case takes milliseconds of
work (the waits are for conditions, polled every few milliseconds).

Fake nodes are a queue on the twin broker and a heartbeat on the twin NATS, admitted by
setting their trust in the ledger; their results are written by the test.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cortensor.adapters import memory
from cortensor.adapters.celery_wire import TASK_RUN_ASSIGNMENTS
from cortensor.adapters.memory import (
    MemoryBroker,
    MemoryChannel,
    MemoryKeys,
    MemoryLedger,
    MemoryNats,
)
from cortensor.adapters.memory.ledger import sides
from cortensor.adapters.topology import Topology
from cortensor.catalog import GENERATE_MODEL, PRECISION, TASK_OF, HwClass
from cortensor.schemas import (
    Assignment,
    InferenceResult,
    JobRequest,
    NodeHeartbeat,
    Verdict,
    utcnow,
)
from cortensor.services.guard.service import Guard
from cortensor.services.router.service import Router
from tests.conftest import eventually, make_settings
from tests.node_keys import public_key_of, signed_by

MODEL = "all-MiniLM-L6-v2"
UP = [1.0] + [0.0] * 383
WAIT = 0.005
CLIENT = "client-1"
"""The owner the jobs are published by."""
"""How often a condition is polled: the twins answer within a few turns of the loop."""


@dataclass
class Twins:
    """A router and a guard on twin brokers and one twin ledger."""

    topology: Topology
    broker: MemoryBroker
    nats: MemoryNats
    ledger: MemoryLedger
    router: Router
    router_channel: MemoryChannel
    keys: MemoryKeys
    nodes: dict[str, str] = field(default_factory=dict)

    async def join(self, node_id: str, hw_class: HwClass = "cpu-int8", model: str = MODEL) -> None:
        """A node announces itself and is admitted as if it had passed its probes."""
        spec = self.topology.node_queue(node_id, hw_class)
        self.broker.declare_queue(spec)
        self.nodes[node_id] = spec.name
        beat = NodeHeartbeat(
            node_id=node_id,
            hw_class=hw_class,
            precision=PRECISION[hw_class],
            tasks=[TASK_OF[model]],
            models=[model],
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
        await eventually(
            lambda: node_id in self.ledger.tables.nodes, what="recorded", interval=WAIT
        )
        self.ledger.set_trust(node_id, "active")
        await eventually(
            lambda: any(
                v.node_id == node_id and v.trust == "active" for v in self.router.registry.views()
            ),
            what=f"{node_id} admitted",
            interval=WAIT,
        )

    def submit(self, job: JobRequest) -> None:
        self.broker.publish(
            self.topology.jobs_exchange,
            self.topology.jobs_routing_key(CLIENT),
            job.model_dump_json().encode(),
            message_id=str(job.job_id),
        )

    def sent(self, job_id: uuid.UUID) -> list[Assignment]:
        """The assignments of a job taken off the nodes' queues now."""
        out: list[Assignment] = []
        for queue in self.nodes.values():
            while (delivery := self.broker.get(queue)) is not None:
                assert delivery.headers["task"] == TASK_RUN_ASSIGNMENTS
                _, kwargs, _ = json.loads(delivery.body)
                out += [Assignment.model_validate(a) for a in kwargs["assignments"]]
        return [a for a in out if a.job_id == job_id]

    async def assignments_of(self, job_id: uuid.UUID, count: int) -> list[Assignment]:
        found: list[Assignment] = []

        def collect() -> bool:
            found.extend(self.sent(job_id))
            return len(found) >= count

        await eventually(collect, what=f"{count} assignments of {job_id}", interval=WAIT)
        return found

    async def answer(self, a: Assignment, msg_id: str, **output: Any) -> None:
        """Answer an assignment (an embedding of UP unless `output` gives the task's)."""
        result = InferenceResult(
            assignment_id=a.assignment_id,
            job_id=a.job_id,
            node_id=a.node_id,
            task=a.task,
            model=a.model,
            hw_class=a.hw_class,
            precision=PRECISION[a.hw_class],
            **(output or {"embeddings": [UP]}),
        )
        payload = result.model_dump_json().encode()
        await self.nats.publish(
            self.topology.results_subject(str(a.job_id), node_id=a.node_id),
            payload,
            msg_id=msg_id,
            headers=signed_by(a.node_id, payload),
        )

    def verdicts(self, job_id: uuid.UUID) -> list[Verdict]:
        subject = self.topology.verdicts_subject(str(job_id), owner=CLIENT)
        return [
            Verdict.model_validate_json(data)
            for s, data in self.nats.stored(self.topology.verdicts_stream)
            if s == subject
        ]

    async def verdict_of(self, job_id: uuid.UUID) -> list[Verdict]:
        """The verdicts published on a job, once there is one."""
        return await eventually(lambda: self.verdicts(job_id), what="a verdict", interval=WAIT)

    def events(self, job_id: uuid.UUID) -> list[tuple[str, str]]:
        return sorted((e.node_id, e.kind) for e in self.ledger.tables.events if e.job_id == job_id)

    def held(self, job_id: uuid.UUID) -> list[str]:
        """The nodes holding assignments of a job in the ledger."""
        return [a.node_id for a in self.ledger.tables.of_job(job_id)]

    def settled(self) -> bool:
        return self.broker.depth(self.topology.router_queue) == 0 and not (
            self.router_channel.unsettled
        )


@pytest.fixture
async def twins() -> AsyncIterator[Twins]:
    settings = make_settings(registry_refresh_s=0.02, sweep_interval_s=0.02)
    topology = Topology(settings.namespace)
    broker, nats, ledger = MemoryBroker(topology), MemoryNats(topology), MemoryLedger()
    router_ledger, guard_ledger = sides(ledger)
    keys = MemoryKeys()
    ports, channel = memory.router_ports(
        router_ledger, broker, nats, topology, keys=keys, prefetch=settings.router_prefetch
    )
    router = Router(settings, ports, seed=7)
    guard = Guard(
        settings, memory.guard_ports(guard_ledger, nats, topology, keys=keys), fetch_wait_s=0.02
    )
    # Each node is bound as it joins and heard once: look every unknown id up.
    router.keyring.miss_reload_s = guard.keyring.miss_reload_s = 0.0
    stop = asyncio.Event()
    running = [asyncio.create_task(router.run(stop)), asyncio.create_task(guard.run(stop))]
    try:
        yield Twins(topology, broker, nats, ledger, router, channel, keys)
    finally:
        stop.set()
        await asyncio.gather(*running)


def node_ids(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"tw-{tag}-{i}" for i in range(n)]


async def test_a_job_makes_assignments_results_one_verdict_and_events_and_copies_change_nothing(
    twins: Twins,
) -> None:
    nodes = node_ids(3)
    for node in nodes:
        await twins.join(node)
    job = JobRequest(inputs=["hello"], redundancy=3, model=MODEL)
    twins.submit(job)
    sent = await twins.assignments_of(job.job_id, 3)
    assert sorted(a.node_id for a in sent) == sorted(nodes)
    await eventually(twins.settled, what="the job acked", interval=WAIT)

    twins.submit(job)  # delivered again: recorded once, its assignments sent again
    again = await twins.assignments_of(job.job_id, 3)
    assert {a.assignment_id for a in again} == {a.assignment_id for a in sent}
    await eventually(twins.settled, what="the copy acked", interval=WAIT)
    assert len(twins.held(job.job_id)) == 3

    for a in sent:
        await twins.answer(a, msg_id=str(a.assignment_id))
    [verdict] = await eventually(
        lambda: twins.verdicts(job.job_id), what="a verdict", interval=WAIT
    )
    assert verdict.status == "verified"
    assert sorted(verdict.agreeing) == sorted(nodes)
    assert twins.events(job.job_id) == sorted((n, "agreed") for n in nodes)
    for node in nodes:
        standing = twins.ledger.standing(node, MODEL)
        assert standing is not None
        assert standing.streak == 1

    for a in sent:  # the same results under new message ids
        await twins.answer(a, msg_id=f"again-{a.assignment_id}")
    durable = twins.topology.guard_consumer.durable
    await eventually(lambda: twins.nats.backlog(durable) == 0, what="all acked", interval=WAIT)
    assert twins.verdicts(job.job_id) == [verdict]
    assert len(twins.ledger.tables.results) == 3
    assert twins.events(job.job_id) == sorted((n, "agreed") for n in nodes)
    await eventually(
        lambda: twins.ledger.tables.verdicts[job.job_id].published_at is not None,
        what="the verdict marked published",
        interval=WAIT,
    )


async def test_an_auto_jobs_checks_go_out_only_after_its_leaders_answer(twins: Twins) -> None:
    nodes = node_ids(3)
    for node in nodes:
        await twins.join(node)
    job = JobRequest(inputs=["alone?"], redundancy="auto", model=MODEL)
    twins.submit(job)
    [leader] = await twins.assignments_of(job.job_id, 1)
    await eventually(twins.settled, what="the job acked", interval=WAIT)
    # Several sweeps and top-ups pass, and still only the leader holds the job.
    sweeps = 5
    await asyncio.sleep(sweeps * twins.router.settings.sweep_interval_s)
    assert twins.held(job.job_id) == [leader.node_id]
    assert twins.sent(job.job_id) == []

    await twins.answer(leader, msg_id=str(leader.assignment_id))
    checks = await twins.assignments_of(job.job_id, 2)
    assert leader.node_id not in {a.node_id for a in checks}
    for a in checks:
        await twins.answer(a, msg_id=str(a.assignment_id))
    [verdict] = await eventually(
        lambda: twins.verdicts(job.job_id), what="a verdict", interval=WAIT
    )
    assert verdict.status == "verified"
    assert sorted(verdict.agreeing) == sorted(nodes)
    assert twins.events(job.job_id) == sorted((n, "agreed") for n in nodes)


async def test_a_generate_job_runs_on_one_class_and_a_cut_answer_loses(twins: Twins) -> None:
    """A generate job open to every class goes to the class with the most nodes, so that
    its replicas are compared token for token; the conversation and max_tokens reach the
    nodes, and an answer cut short (the same first tokens) disagrees."""
    fp32, int8 = node_ids(2), node_ids(3)
    for node in fp32:
        await twins.join(node, "cpu-fp32", GENERATE_MODEL)
    for node in int8:
        await twins.join(node, "cpu-int8", GENERATE_MODEL)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    job = JobRequest.model_validate(
        {"task": "generate", "messages": chat, "max_tokens": 12, "redundancy": 3}
    )
    twins.submit(job)
    sent = await twins.assignments_of(job.job_id, 3)
    assert sorted(a.node_id for a in sent) == sorted(int8)
    for a in sent:
        assert a.inputs == []
        assert [t.model_dump() for t in a.messages or []] == chat
        assert a.max_tokens == 12

    honest = {"text": "Hello there, friend.", "tokens": [5, 6, 7, 8], "finish_reason": "stop"}
    cut = {"text": "Hello", "tokens": [5, 6], "finish_reason": "stop"}
    cheat = sent[0].node_id
    for a in sent:
        answer = cut if a.node_id == cheat else honest
        await twins.answer(a, msg_id=str(a.assignment_id), generations=[answer])
    [verdict] = await twins.verdict_of(job.job_id)
    assert verdict.status == "verified"
    assert sorted(verdict.agreeing) == sorted(n for n in int8 if n != cheat)
    assert verdict.disagreeing == [cheat]
    assert verdict.generations is not None
    assert verdict.generations[0].model_dump() == honest
