"""Results no ledger can store, published to the real results stream, and a guard in
this process on the real JetStream and ledger: the bad ones are refused and never
delivered again, and the good ones around them are all stored and decided.

The bad results are signed by the nodes whose subjects they use (nodes of the fleet gone
rogue, the worst case: an outsider's unsigned ones never get past the signature check),
so that they reach the schema."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortensor.adapters import jetstream
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.keys import bind_key
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.live import guard_ports
from cortensor.adapters.topology import Topology
from cortensor.errors import BadInput
from cortensor.protocol.signing import public_bytes, sign, signature_headers
from cortensor.protocol.units import NewJob, whole_job
from cortensor.schemas import Assignment, InferenceResult, JobRequest
from cortensor.services.guard.service import Guard
from cortensor.settings import Settings
from tests.conftest import eventually
from tests.integration.test_ledger_store import (
    assignments_for,
    embeddings,
    heartbeat,
    in_s,
    job_status,
    node_ids,
    result_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

BAD_PER_JOB = 30
JOBS = 10


@dataclass
class Stream:
    """The results stream as nodes and the guards see it."""

    settings: Settings
    topology: Topology
    js: Any
    keys: dict[str, Ed25519PrivateKey]

    async def join(self, router: RouterLedger, nodes: Sequence[str]) -> None:
        """Nodes with keys bound in the ledger, as `cortensor credentials issue` binds them."""
        await router.upsert_nodes([heartbeat(n) for n in nodes])
        db = await asyncpg.connect(self.settings.asyncpg_dsn)
        try:
            for node in nodes:
                self.keys[node] = Ed25519PrivateKey.generate()
                assert await bind_key(db, node, public_bytes(self.keys[node]))
        finally:
            await db.close()

    async def publish(self, node: str, job_id: uuid.UUID, data: bytes) -> None:
        """Publish `data` as `node`'s result for a job: on its subject, signed with its key."""
        subject = self.topology.results_subject(str(job_id), node_id=node)
        headers = signature_headers(sign(self.keys[node], data))
        await self.js.publish(subject, data, headers=headers)

    async def settled(self) -> bool:
        """True once every result was acked or refused for good: nothing is left to
        deliver and nothing waits for a redelivery."""
        consumer = self.topology.guard_consumer
        info = await self.js.consumer_info(consumer.stream, consumer.durable)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)


@pytest.fixture
async def stream(broker_settings: Settings) -> AsyncIterator[Stream]:
    nc = await jetstream.connect_as(broker_settings, name="outsider")
    try:
        yield Stream(broker_settings, Topology(broker_settings.namespace), nc.jetstream(), {})
    finally:
        await nc.drain()


@pytest.fixture
async def guard_running(broker_settings: Settings) -> AsyncIterator[Guard]:
    stop = asyncio.Event()
    async with guard_ports(broker_settings) as ports:
        guard = Guard(broker_settings, ports, fetch_wait_s=0.05)
        task = asyncio.create_task(guard.run(stop))
        try:
            yield guard
        finally:
            stop.set()
            await task


async def open_jobs(router: RouterLedger, stream: Stream, count: int) -> list[Assignment]:
    """`count` jobs of one replica each, on nodes of their own; their assignments."""
    nodes = node_ids(count)
    await stream.join(router, nodes)
    made = []
    for node in nodes:
        job = JobRequest(inputs=["a text"], redundancy=1)
        [assignment] = assignments_for(job, [node], in_s(600))
        opened = NewJob(whole_job(job, in_s(600)), job.created_at, "running", [assignment])
        assert await router.open_jobs([opened])
        made.append(assignment)
    return made


def poisoned(assignment: Assignment) -> bytes:
    """A result for the assignment, as its node would send it, but for a NUL in its
    error: JSON a client in any language may write, text PostgreSQL cannot hold."""
    raw = result_for(assignment, None, error="x").model_dump(mode="json")
    raw["result_id"] = str(uuid.uuid4())
    raw["error"] = "out of memory\u0000"
    return json.dumps(raw).encode()


async def all_verified(guard: GuardLedger, jobs: Sequence[uuid.UUID]) -> bool:
    return all([await job_status(guard, j) == "verified" for j in jobs])


async def test_results_with_nul_from_an_outsider_stop_no_good_result(
    router: RouterLedger, guard: GuardLedger, stream: Stream, guard_running: Guard
) -> None:
    made = await open_jobs(router, stream, JOBS)
    for _ in range(BAD_PER_JOB):  # 300 in all, on the very subjects of the good ones
        for a in made:
            await stream.publish(a.node_id, a.job_id, poisoned(a))

    for a in made:
        good = result_for(a, embeddings(1))
        await stream.publish(a.node_id, a.job_id, good.model_dump_json().encode())

    await eventually(
        lambda: all_verified(guard, [a.job_id for a in made]),
        what=f"all {JOBS} good jobs verified",
        within=30,
    )
    await eventually(stream.settled, what="every result acked or refused, none redelivered")
    errors = await guard.pool.fetchval(
        "SELECT count(*) FROM results WHERE assignment_id = ANY($1::uuid[]) AND error IS NOT NULL",
        [a.assignment_id for a in made],
    )
    assert errors == 0


async def test_an_unstorable_value_is_bad_input_and_stores_nothing_of_its_batch(
    router: RouterLedger, guard: GuardLedger, stream: Stream
) -> None:
    # Built without validation: what the schema would refuse, standing in for any value
    # PostgreSQL refuses that a schema could miss.
    [a] = await open_jobs(router, stream, 1)
    fields = result_for(a, None, error="x").model_dump()
    for bad in ("NUL \x00 inside", "lone \ud800 surrogate"):
        unchecked = InferenceResult.model_construct(**{**fields, "error": bad})
        with pytest.raises(BadInput, match="the ledger cannot store this"):
            await guard.take_results(a.job_id, [unchecked])
    assert await job_status(guard, a.job_id) == "running"

    intake = await guard.take_results(a.job_id, [result_for(a, embeddings(1))])
    assert intake.stored == 1
    assert await job_status(guard, a.job_id) == "verified"


async def test_a_result_the_ledger_refuses_is_refused_alone_and_its_batch_is_stored(
    router: RouterLedger,
    guard: GuardLedger,
    stream: Stream,
    guard_running: Guard,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two replicas of one job, and a third result the ledger refuses (as it would a
    # value no schema foresaw), all in the guard's batches together.
    nodes = node_ids(3)
    await stream.join(router, nodes)
    job = JobRequest(inputs=["a text"], redundancy=2)
    made = assignments_for(job, nodes, in_s(600))
    assert await router.open_jobs(
        [NewJob(whole_job(job, in_s(600)), job.created_at, "running", made)]
    )
    truth = embeddings(1)
    results = [result_for(a, truth) for a in made]
    refused = results[2].result_id
    attempts: list[int] = []
    take = guard_running.ledger.take_results

    async def refusing(job_id: uuid.UUID, batch: Sequence[InferenceResult]) -> Any:
        if any(r.result_id == refused for r in batch):
            attempts.append(len(batch))
            raise BadInput("the ledger cannot store this: a value it refuses")
        return await take(job_id, batch)

    monkeypatch.setattr(guard_running.ledger, "take_results", refusing)
    for a, r in zip(made, results, strict=True):
        await stream.publish(a.node_id, a.job_id, r.model_dump_json().encode())

    await eventually(lambda: all_verified(guard, [job.job_id]), what="the job verified")
    await eventually(stream.settled, what="every result acked or refused, none redelivered")
    stored = await guard.pool.fetchval("SELECT count(*) FROM results WHERE job_id = $1", job.job_id)
    assert stored == 2
    assert attempts[-1] == 1  # the refused one was last tried alone
