"""The router's and the guard's ledger writes (RouterLedger, GuardLedger) on PostgreSQL.

Most tests share the module's migrated ledger (`ledger_settings`) and touch only jobs
and nodes of their own, with unique ids. The sweeps (`decide_expired`,
`reroute_expired`, `route_waiting`, `unpublished_verdicts`) act on every job of a
database, so their tests get a freshly migrated database each and can assert exactly
what a sweep returns.

Outputs are random 384-d unit vectors: honest replicas share one, a liar draws its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import pytest

from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.router import NodeStats, OpenJob, RouterLedger
from cortensor.protocol.planning import Plan
from cortensor.protocol.replication import MAX_REPLICAS
from cortensor.protocol.reputation import Record, score
from cortensor.protocol.units import NewJob, whole_job
from cortensor.schemas import (
    Assignment,
    InferenceResult,
    JobRequest,
    NodeHeartbeat,
    Verdict,
    utcnow,
)
from cortensor.settings import Settings
from tests.integration.conftest import Ledgers

pytestmark = pytest.mark.postgres

DIM = 384
MODEL = "all-MiniLM-L6-v2"
RNG = np.random.default_rng(20250101)
TRUTH = [[0.6, 0.8], [1.0, 0.0]]


# -- builders -------------------------------------------------------------------------------


def embeddings(rows: int = 2) -> list[list[float]]:
    """`rows` random unit vectors, as a node would publish them."""
    matrix = RNG.standard_normal((rows, DIM))
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return [[float(x) for x in row] for row in matrix]


def node_ids(count: int) -> list[str]:
    """Node ids no other test uses."""
    tag = uuid.uuid4().hex[:8]
    return [f"n{tag}-{i}" for i in range(count)]


def heartbeat(
    node_id: str, *, hw_class: str = "cpu-fp32", precision: str = "fp32"
) -> NodeHeartbeat:
    return NodeHeartbeat(
        node_id=node_id,
        hw_class=hw_class,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        tasks=["embed"],
        models=[MODEL],
        capacity=4,
        inflight=0,
        processed=0,
        started_at=utcnow(),
    )


def in_s(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def job_request(redundancy: int = 3, inputs: int = 2) -> JobRequest:
    return JobRequest(inputs=[f"sentence {i}" for i in range(inputs)], redundancy=redundancy)


def assignments_for(
    job: JobRequest | OpenJob, nodes: Sequence[str], deadline_at: datetime, attempt: int = 1
) -> list[Assignment]:
    return [
        Assignment(
            job_id=job.job_id,
            node_id=node,
            task=job.task,  # type: ignore[arg-type]
            model=job.model,
            inputs=list(job.inputs),
            hw_class="cpu-fp32",
            deadline_at=deadline_at,
            attempt=attempt,
        )
        for node in nodes
    ]


def result_for(
    assignment: Assignment,
    output: list[list[float]] | None,
    *,
    node_id: str | None = None,
    error: str | None = None,
) -> InferenceResult:
    return InferenceResult(
        assignment_id=assignment.assignment_id,
        job_id=assignment.job_id,
        node_id=node_id or assignment.node_id,
        model=assignment.model,
        hw_class="cpu-fp32",
        precision="fp32",
        embeddings=output,
        error=error,
        elapsed_ms=12.5,
    )


@dataclass
class Running:
    """A job opened with one assignment per node."""

    job: JobRequest
    nodes: list[str]
    assignments: list[Assignment]

    def of(self, node: str) -> Assignment:
        return next(a for a in self.assignments if a.node_id == node)


async def open_running(
    router: RouterLedger,
    *,
    redundancy: int = 3,
    extra_nodes: int = 0,
    deadline_at: datetime | None = None,
    assignment_deadline_at: datetime | None = None,
) -> Running:
    """Register fresh nodes and open a job on `redundancy` of them."""
    nodes = node_ids(redundancy + extra_nodes)
    await router.upsert_nodes([heartbeat(n) for n in nodes])
    job = job_request(redundancy)
    deadline = deadline_at or in_s(600)
    made = assignments_for(job, nodes[:redundancy], assignment_deadline_at or deadline)
    assert await router.open_job(job, deadline, made)
    await router.mark_sent([a.assignment_id for a in made])  # as the router does once sent
    return Running(job, nodes, made)


async def events_of(ledger: Any, job_id: uuid.UUID) -> dict[str, tuple[str, uuid.UUID]]:
    """node id -> (kind, assignment id) of every reputation event of a job."""
    rows = await ledger.pool.fetch(
        "SELECT node_id, kind, assignment_id FROM reputation_events WHERE job_id = $1", job_id
    )
    by_node = {r["node_id"]: (r["kind"], r["assignment_id"]) for r in rows}
    assert len(by_node) == len(rows), f"a node got two events for one job: {rows}"
    return by_node


async def statuses(ledger: Any, job_id: uuid.UUID) -> dict[str, str]:
    rows = await ledger.pool.fetch(
        "SELECT node_id, status FROM assignments WHERE job_id = $1", job_id
    )
    return {r["node_id"]: r["status"] for r in rows}


async def job_status(ledger: Any, job_id: uuid.UUID) -> str:
    status: str = await ledger.pool.fetchval("SELECT status FROM jobs WHERE job_id = $1", job_id)
    return status


# -- nodes ----------------------------------------------------------------------------------


async def test_a_new_node_scores_the_prior_and_holds_nothing(router: RouterLedger) -> None:
    [node] = node_ids(1)
    await router.upsert_nodes([heartbeat(node)])

    stats = await router.node_stats()

    assert stats[node] == NodeStats(score=0.5, outstanding=0, trust="probation", streaks={})


async def test_upsert_nodes_updates_what_a_node_announces(router: RouterLedger) -> None:
    [node] = node_ids(1)
    await router.upsert_nodes([heartbeat(node)])
    first_seen = await router.pool.fetchval("SELECT last_seen FROM nodes WHERE node_id = $1", node)
    draining = heartbeat(node, hw_class="cpu-int8", precision="int8").model_copy(
        update={"status": "draining", "capacity": 9}
    )

    await router.upsert_nodes([draining])

    row = await router.pool.fetchrow("SELECT * FROM nodes WHERE node_id = $1", node)
    assert (row["hw_class"], row["precision"], row["capacity"], row["status"]) == (
        "cpu-int8",
        "int8",
        9,
        "draining",
    )
    assert row["models"] == [MODEL]
    assert row["last_seen"] > first_seen
    assert await router.pool.fetchval("SELECT count(*) FROM nodes WHERE node_id = $1", node) == 1


async def test_outstanding_counts_only_assigned_replicas(
    router: RouterLedger, guard: GuardLedger
) -> None:
    running = await open_running(router, redundancy=2)
    a, b = running.nodes
    stats = await router.node_stats()
    assert (stats[a].outstanding, stats[b].outstanding) == (1, 1)

    intake = await guard.take_results(running.job.job_id, [result_for(running.of(a), embeddings())])

    assert intake.stored == 1
    stats = await router.node_stats()
    assert (stats[a].outstanding, stats[b].outstanding) == (0, 1)


# -- opening and rejecting jobs -------------------------------------------------------------


async def test_open_job_writes_the_job_and_its_assignments_once(router: RouterLedger) -> None:
    nodes = node_ids(3)
    await router.upsert_nodes([heartbeat(n) for n in nodes])
    job = job_request(3)
    deadline = in_s(60)
    made = assignments_for(job, nodes, in_s(10))

    assert await router.open_job(job, deadline, made) is True

    row = await router.pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job.job_id)
    assert row["status"] == "running"
    assert (row["task"], row["model"], row["redundancy"], row["hw_class"]) == (
        "embed",
        MODEL,
        3,
        "any",
    )
    assert row["inputs"] == list(job.inputs)
    assert row["created_at"] == job.created_at
    assert row["deadline_at"] == deadline
    assert row["decided_at"] is None
    rows = await router.pool.fetch(
        "SELECT assignment_id, node_id, status, attempt FROM assignments WHERE job_id = $1",
        job.job_id,
    )
    assert {(r["assignment_id"], r["node_id"], r["status"], r["attempt"]) for r in rows} == {
        (a.assignment_id, a.node_id, "assigned", 1) for a in made
    }

    # The same job again (a redelivered message), even planned differently, changes nothing.
    again = assignments_for(job, nodes, in_s(10))
    assert await router.open_job(job, in_s(120), again) is False
    assert await router.pool.fetchval(
        "SELECT count(*) FROM assignments WHERE job_id = $1", job.job_id
    ) == len(made)
    assert (
        await router.pool.fetchval("SELECT deadline_at FROM jobs WHERE job_id = $1", job.job_id)
        == deadline
    )


async def test_open_job_without_assignments_waits(router: RouterLedger) -> None:
    job = job_request(3)

    assert await router.open_job(job, in_s(60), []) is True
    assert await router.open_job(job, in_s(60), []) is False

    assert await job_status(router, job.job_id) == "waiting"
    assert (
        await router.pool.fetchval("SELECT count(*) FROM assignments WHERE job_id = $1", job.job_id)
        == 0
    )


async def test_open_job_is_one_transaction(router: RouterLedger) -> None:
    [known] = node_ids(1)
    await router.upsert_nodes([heartbeat(known)])
    job = job_request(2)
    # The second node was never registered: its assignment violates a foreign key.
    made = assignments_for(job, [known, *node_ids(1)], in_s(10))

    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await router.open_job(job, in_s(60), made)

    assert (
        await router.pool.fetchval("SELECT count(*) FROM jobs WHERE job_id = $1", job.job_id) == 0
    )
    assert await router.open_job(job, in_s(60), made[:1]) is True


async def test_reject_writes_a_rejected_job_and_its_verdict_once(router: RouterLedger) -> None:
    job_id = uuid.uuid4()
    verdict = Verdict(job_id=job_id, status="rejected", reason="inputs [0] are blank")

    assert await router.reject(job_id, {"task": "embed", "inputs": [" "]}, verdict) is True

    row = await router.pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
    assert (row["status"], row["reason"], row["task"]) == (
        "rejected",
        "inputs [0] are blank",
        "embed",
    )
    assert row["decided_at"] is not None
    assert await router.stored_verdict(job_id) == verdict
    stored = await router.pool.fetchrow("SELECT * FROM verdicts WHERE job_id = $1", job_id)
    assert (stored["status"], stored["reason"], stored["published_at"]) == (
        "rejected",
        "inputs [0] are blank",
        None,
    )

    other = Verdict(job_id=job_id, status="rejected", reason="something else")
    assert await router.reject(job_id, {"task": "embed"}, other) is False
    assert await router.stored_verdict(job_id) == verdict


async def test_reject_keeps_a_usable_task_name_from_any_request(router: RouterLedger) -> None:
    long_id, odd_id = uuid.uuid4(), uuid.uuid4()

    assert await router.reject(
        long_id, {"task": "x" * 500}, Verdict(job_id=long_id, status="rejected", reason="long")
    )
    assert await router.reject(
        odd_id, {"task": ["embed"]}, Verdict(job_id=odd_id, status="rejected", reason="odd")
    )

    assert await router.pool.fetchval("SELECT task FROM jobs WHERE job_id = $1", long_id) == (
        "x" * 64
    )
    assert await router.pool.fetchval("SELECT task FROM jobs WHERE job_id = $1", odd_id) == ""


async def test_reject_of_a_known_job_changes_nothing(router: RouterLedger) -> None:
    running = await open_running(router, redundancy=1)
    job_id = running.job.job_id

    refused = await router.reject(
        job_id, {"task": "embed"}, Verdict(job_id=job_id, status="rejected", reason="dup")
    )

    assert refused is False
    assert await job_status(router, job_id) == "running"
    assert await router.stored_verdict(job_id) is None


# -- the guard: results in, verdicts and reputation out -------------------------------------


async def test_a_job_is_decided_once_a_strict_majority_agrees(
    router: RouterLedger, guard: GuardLedger
) -> None:
    running = await open_running(router)
    job_id = running.job.job_id
    a, b, c = running.nodes
    truth = embeddings()
    ra, rb, rc = (result_for(running.of(n), truth) for n in running.nodes)

    first = await guard.take_results(job_id, [ra])

    assert (first.stored, first.ignored, first.verdict, first.new_verdict) == (1, [], None, False)
    assert await job_status(guard, job_id) == "running"
    assert await events_of(guard, job_id) == {}

    second = await guard.take_results(job_id, [rb])

    assert second.stored == 1
    assert second.new_verdict is True
    verdict = second.verdict
    assert verdict is not None
    assert verdict.status == "verified"
    assert verdict.reason == "2 of 3 replicas agree"
    assert sorted(verdict.agreeing) == sorted([a, b])
    assert (verdict.disagreeing, verdict.timed_out, verdict.replicas) == ([], [], 2)
    assert verdict.canonical_result_id in {ra.result_id, rb.result_id}
    assert verdict.embeddings == truth
    assert await guard.stored_verdict(job_id) == verdict
    row = await guard.pool.fetchrow("SELECT status, decided_at FROM jobs WHERE job_id = $1", job_id)
    assert row["status"] == "verified"
    assert row["decided_at"] is not None
    assert await statuses(guard, job_id) == {a: "done", b: "done", c: "assigned"}
    assert await events_of(guard, job_id) == {
        n: ("agreed", running.of(n).assignment_id) for n in (a, b)
    }

    # The third replica still counts: it is held against the canonical answer.
    last = await guard.take_results(job_id, [rc])

    assert (last.stored, last.new_verdict, last.verdict) == (1, False, verdict)
    assert await events_of(guard, job_id) == {
        n: ("agreed", running.of(n).assignment_id) for n in running.nodes
    }
    stats = await router.node_stats()
    # Real jobs build a streak, but only known-answer probes admit a node on probation.
    assert {stats[n] for n in running.nodes} == {
        NodeStats(score(Record(agreed=1)), 0, trust="probation", streaks={MODEL: 1})
    }


async def test_a_late_liar_is_charged_after_the_verdict(
    router: RouterLedger, guard: GuardLedger
) -> None:
    running = await open_running(router)
    job_id = running.job.job_id
    a, b, liar = running.nodes
    truth = embeddings()
    await guard.take_results(
        job_id, [result_for(running.of(a), truth), result_for(running.of(b), truth)]
    )

    late = await guard.take_results(job_id, [result_for(running.of(liar), embeddings())])

    assert late.new_verdict is False
    assert late.verdict is not None
    assert late.verdict.status == "verified"
    assert (await events_of(guard, job_id))[liar] == ("disagreed", running.of(liar).assignment_id)


async def test_a_split_waits_for_the_deciding_replica(
    router: RouterLedger, guard: GuardLedger
) -> None:
    running = await open_running(router)
    job_id = running.job.job_id
    honest, liar, third = running.nodes
    truth = embeddings()

    split = await guard.take_results(
        job_id,
        [result_for(running.of(honest), truth), result_for(running.of(liar), embeddings())],
    )
    assert (split.stored, split.verdict) == (2, None)

    decided = await guard.take_results(job_id, [result_for(running.of(third), truth)])

    assert decided.verdict is not None
    assert decided.verdict.status == "verified"
    assert sorted(decided.verdict.agreeing) == sorted([honest, third])
    assert decided.verdict.disagreeing == [liar]


async def test_results_after_the_verdict_return_it_and_write_nothing(
    router: RouterLedger, guard: GuardLedger
) -> None:
    running = await open_running(router)
    job_id = running.job.job_id
    truth = embeddings()
    results = [result_for(a, truth) for a in running.assignments]
    decided = await guard.take_results(job_id, results)
    assert decided.new_verdict
    events = await events_of(guard, job_id)

    # A redelivery of the same message, and a node's second, different answer.
    redelivered = await guard.take_results(job_id, results[:1])
    second_answer = await guard.take_results(
        job_id, [result_for(running.assignments[0], embeddings())]
    )

    for intake in (redelivered, second_answer):
        assert intake.stored == 0
        assert intake.new_verdict is False
        assert intake.verdict == decided.verdict, "the stored verdict comes back to republish"
        assert len(intake.ignored) == 1
        assert "duplicate" in intake.ignored[0]
    assert await events_of(guard, job_id) == events
    assert await guard.pool.fetchval("SELECT count(*) FROM results WHERE job_id = $1", job_id) == 3
    assert (
        await guard.pool.fetchval(
            "SELECT output FROM results WHERE assignment_id = $1",
            running.assignments[0].assignment_id,
        )
        == truth
    )


async def test_a_duplicate_result_before_the_verdict_changes_nothing(
    router: RouterLedger, guard: GuardLedger
) -> None:
    running = await open_running(router)
    job_id = running.job.job_id
    first = result_for(running.assignments[0], embeddings())
    assert (await guard.take_results(job_id, [first])).stored == 1

    again = await guard.take_results(job_id, [first])
    # The same message twice in one batch: the second copy is a duplicate too.
    other = result_for(running.assignments[1], embeddings())
    batch = await guard.take_results(job_id, [other, other])

    assert (again.stored, again.verdict) == (0, None)
    assert "duplicate" in again.ignored[0]
    assert batch.stored == 1
    assert len(batch.ignored) == 1
    assert "duplicate" in batch.ignored[0]
    assert await guard.pool.fetchval("SELECT count(*) FROM results WHERE job_id = $1", job_id) == 2
    assert await job_status(guard, job_id) == "running"


async def test_results_from_nodes_without_that_assignment_are_ignored(
    router: RouterLedger, guard: GuardLedger
) -> None:
    running = await open_running(router, extra_nodes=1)
    job_id = running.job.job_id
    a, b, c, stranger = running.nodes
    truth = embeddings()
    # An unassigned node that invents an assignment, one that claims another node's
    # assignment, and an assigned node that claims a replica it does not hold.
    invented = result_for(
        running.of(a).model_copy(update={"assignment_id": uuid.uuid4()}),
        truth,
        node_id=stranger,
    )
    stolen = result_for(running.of(a), truth, node_id=stranger)
    swapped = result_for(running.of(c), truth, node_id=b)
    # An honest result filed under another job's id.
    elsewhere = result_for(running.of(a).model_copy(update={"job_id": uuid.uuid4()}), truth)

    intake = await guard.take_results(job_id, [invented, stolen, swapped, elsewhere])

    assert intake.stored == 0
    assert len(intake.ignored) == 4, intake.ignored
    assert await guard.pool.fetchval("SELECT count(*) FROM results WHERE job_id = $1", job_id) == 0
    assert await statuses(guard, job_id) == {a: "assigned", b: "assigned", c: "assigned"}

    # The rightful holders can still answer, and only they are judged.
    honest = [result_for(running.of(n), truth) for n in (a, b, c)]
    decided = await guard.take_results(job_id, honest)
    assert decided.verdict is not None
    assert sorted(decided.verdict.agreeing) == sorted([a, b, c])
    assert stranger not in await events_of(guard, job_id)


async def test_a_result_for_an_unknown_job_is_ignored(guard: GuardLedger) -> None:
    job_id = uuid.uuid4()
    assignment = assignments_for(job_request(1), node_ids(1), in_s(10))[0]
    result = result_for(assignment.model_copy(update={"job_id": job_id}), embeddings())

    intake = await guard.take_results(job_id, [result])

    assert (intake.stored, intake.verdict) == (0, None)
    assert len(intake.ignored) == 1
    assert str(job_id) in intake.ignored[0]
    assert "unknown" in intake.ignored[0]


async def test_a_stored_result_keeps_the_whole_output(
    router: RouterLedger, guard: GuardLedger
) -> None:
    running = await open_running(router, redundancy=2)
    job_id = running.job.job_id
    vectors, failing = running.assignments
    truth = embeddings(3)

    # One batch with a vector result and an error result, as the guard gets them.
    intake = await guard.take_results(
        job_id, [result_for(vectors, truth), result_for(failing, None, error="boom")]
    )

    assert intake.ignored == [], (
        "each result of a batch must be stored as one jsonb value; nested lists must not be"
        " sent as a multi-dimensional jsonb[] array"
    )
    assert intake.stored == 2
    rows = await guard.pool.fetch(
        "SELECT assignment_id, output, error FROM results WHERE job_id = $1", job_id
    )
    stored = {r["assignment_id"]: (r["output"], r["error"]) for r in rows}
    assert stored == {
        vectors.assignment_id: (truth, None),
        failing.assignment_id: (None, "boom"),
    }, "results.output must hold the node's whole (n, 384) matrix"


@pytest.mark.parametrize("lie", ["random vector", "error"])
async def test_one_liar_among_three_is_outvoted(
    router: RouterLedger, guard: GuardLedger, lie: str
) -> None:
    running = await open_running(router)
    job_id = running.job.job_id
    honest_a, liar, honest_b = running.nodes
    truth = embeddings()
    results = [
        result_for(running.of(honest_a), truth),
        result_for(running.of(liar), embeddings())
        if lie == "random vector"
        else result_for(running.of(liar), None, error="out of memory"),
        result_for(running.of(honest_b), truth),
    ]

    intake = await guard.take_results(job_id, results)

    verdict = intake.verdict
    assert verdict is not None
    assert verdict.status == "verified"
    assert sorted(verdict.agreeing) == sorted([honest_a, honest_b])
    assert verdict.disagreeing == [liar]
    assert verdict.embeddings == truth
    assert verdict.canonical_result_id in {results[0].result_id, results[2].result_id}
    assert await events_of(guard, job_id) == {
        honest_a: ("agreed", running.of(honest_a).assignment_id),
        honest_b: ("agreed", running.of(honest_b).assignment_id),
        liar: ("disagreed", running.of(liar).assignment_id),
    }
    stats = await router.node_stats()
    assert stats[liar].score == score(Record(disagreed=1)) < 0.5 < stats[honest_a].score


async def test_three_different_answers_ask_for_more_replicas_and_blame_nobody_yet(
    router: RouterLedger, guard: GuardLedger
) -> None:
    running = await open_running(router)
    job_id = running.job.job_id

    intake = await guard.take_results(
        job_id, [result_for(a, embeddings()) for a in running.assignments]
    )

    assert (intake.stored, intake.verdict, intake.escalated) == (3, None, 5)
    assert await job_status(guard, job_id) == "running"
    assert await guard.pool.fetchval("SELECT redundancy FROM jobs WHERE job_id = $1", job_id) == 5
    assert await events_of(guard, job_id) == {}


async def test_no_majority_at_the_cap_is_inconclusive_and_blames_nobody(
    router: RouterLedger, guard: GuardLedger
) -> None:
    running = await open_running(router, redundancy=MAX_REPLICAS)
    job_id = running.job.job_id

    intake = await guard.take_results(
        job_id, [result_for(a, embeddings()) for a in running.assignments]
    )

    assert intake.verdict is not None
    assert intake.verdict.status == "inconclusive"
    assert intake.verdict.canonical_result_id is None
    assert intake.verdict.embeddings is None
    assert await job_status(guard, job_id) == "inconclusive"
    assert await events_of(guard, job_id) == {}


async def test_two_guards_racing_for_the_last_results_decide_once(
    router: RouterLedger, guard: GuardLedger, ledger_settings: Settings
) -> None:
    running = await open_running(router)
    job_id = running.job.job_id
    truth = embeddings()
    ra, rb, rc = (result_for(a, truth) for a in running.assignments)
    assert (await guard.take_results(job_id, [ra])).stored == 1
    other = await GuardLedger.connect(ledger_settings.asyncpg_dsn)
    try:
        intakes = await asyncio.gather(
            guard.take_results(job_id, [rb]),
            other.take_results(job_id, [rc]),
        )
    finally:
        await other.close()

    assert [i.stored for i in intakes] == [1, 1]
    assert sorted(i.new_verdict for i in intakes) == [False, True]
    decided = next(i for i in intakes if i.new_verdict)
    assert decided.verdict is not None
    assert decided.verdict.status == "verified"
    assert await guard.pool.fetchval("SELECT count(*) FROM verdicts WHERE job_id = $1", job_id) == 1
    assert len(await events_of(guard, job_id)) == 3


# -- deadlines: the guard's sweep -----------------------------------------------------------


async def test_decide_expired_with_no_results_fails_the_job(own: Ledgers) -> None:
    running = await open_running(own.router, deadline_at=in_s(-1))

    verdicts = await own.guard.decide_expired()

    assert [v.job_id for v in verdicts] == [running.job.job_id]
    [verdict] = verdicts
    assert verdict.status == "failed"
    assert "no node returned a result" in verdict.reason
    assert sorted(verdict.timed_out) == sorted(running.nodes)
    assert await job_status(own.guard, running.job.job_id) == "failed"
    assert await statuses(own.guard, running.job.job_id) == dict.fromkeys(
        running.nodes, "timed_out"
    )
    assert await events_of(own.guard, running.job.job_id) == {
        n: ("timed_out", running.of(n).assignment_id) for n in running.nodes
    }
    assert await own.guard.decide_expired() == []


async def test_decide_expired_with_one_of_three_results_is_inconclusive(own: Ledgers) -> None:
    running = await open_running(own.router, deadline_at=in_s(-1))
    job_id = running.job.job_id
    answered, *silent = running.nodes
    late_result = result_for(running.of(silent[0]), embeddings())
    intake = await own.guard.take_results(job_id, [result_for(running.of(answered), embeddings())])
    assert (intake.stored, intake.verdict) == (1, None)

    [verdict] = await own.guard.decide_expired()

    assert verdict.job_id == job_id
    assert verdict.status == "inconclusive"
    assert "1 of 3" in verdict.reason
    assert verdict.replicas == 1
    assert sorted(verdict.timed_out) == sorted(silent)
    assert (verdict.agreeing, verdict.disagreeing) == ([], [])
    assert await statuses(own.guard, job_id) == {
        answered: "done",
        **dict.fromkeys(silent, "timed_out"),
    }
    events = await events_of(own.guard, job_id)
    assert events == {n: ("timed_out", running.of(n).assignment_id) for n in silent}

    # A replica that arrives after the deadline is too late: the verdict stands.
    late = await own.guard.take_results(job_id, [late_result])
    assert (late.stored, late.new_verdict) == (0, False)
    assert late.verdict == verdict
    assert "too late" in late.ignored[0]
    assert await events_of(own.guard, job_id) == events
    assert await statuses(own.guard, job_id) == {
        answered: "done",
        **dict.fromkeys(silent, "timed_out"),
    }


async def test_a_silent_replica_of_a_decided_job_is_charged_at_its_deadline(
    own: Ledgers,
) -> None:
    running = await open_running(own.router, assignment_deadline_at=in_s(-1))
    job_id = running.job.job_id
    a, b, silent = running.nodes
    truth = embeddings()
    intake = await own.guard.take_results(
        job_id, [result_for(running.of(a), truth), result_for(running.of(b), truth)]
    )
    assert intake.verdict is not None
    assert intake.verdict.status == "verified"
    assert await own.guard.decide_expired() == []

    assert await own.guard.expire_stragglers() == 1
    assert await own.guard.expire_stragglers() == 0

    assert await statuses(own.guard, job_id) == {a: "done", b: "done", silent: "timed_out"}
    assert await events_of(own.guard, job_id) == {
        a: ("agreed", running.of(a).assignment_id),
        b: ("agreed", running.of(b).assignment_id),
        silent: ("timed_out", running.of(silent).assignment_id),
    }


async def test_decide_expired_leaves_jobs_within_their_deadline(own: Ledgers) -> None:
    running = await open_running(own.router, assignment_deadline_at=in_s(-1))
    waiting = job_request()
    await own.router.open_job(waiting, in_s(-1), [])

    assert await own.guard.decide_expired() == []

    assert await job_status(own.guard, running.job.job_id) == "running"
    assert await job_status(own.guard, waiting.job_id) == "waiting"


# -- the router's sweeps --------------------------------------------------------------------


class Planner:
    """A `plan` callback that records its calls and assigns the given spare nodes."""

    def __init__(self, spare: Sequence[str]) -> None:
        self.spare = list(spare)
        self.calls: list[tuple[OpenJob, int]] = []

    def __call__(self, job: OpenJob, needed: int) -> Plan | str:
        self.calls.append((job, needed))
        free = [n for n in self.spare if n not in job.taken]
        if len(free) < needed:
            return f"needs {needed} more node(s); {len(free)} available"
        return Plan(job, tuple((n, "cpu-fp32") for n in free[:needed]), in_s(60), job.redundancy)


async def test_reroute_expired_replaces_a_late_replica(own: Ledgers) -> None:
    running = await open_running(own.router, extra_nodes=1)
    job_id = running.job.job_id
    late, b, c, spare = running.nodes
    await own.router.pool.execute(
        "UPDATE assignments SET deadline_at = now() - interval '1 second' WHERE assignment_id = $1",
        running.of(late).assignment_id,
    )
    plan = Planner([spare])

    made = await own.router.reroute_expired(plan)

    [(job, needed)] = plan.calls
    assert (job.job_id, needed, job.attempt, job.redundancy) == (job_id, 1, 2, 3)
    assert job.taken == frozenset([late, b, c]), "nodes that held a replica are excluded"
    assert job.inputs == list(running.job.inputs)
    [replacement] = made
    assert (replacement.node_id, replacement.attempt) == (spare, 2)
    row = await own.router.pool.fetchrow(
        "SELECT node_id, status, attempt FROM assignments WHERE assignment_id = $1",
        replacement.assignment_id,
    )
    assert (row["node_id"], row["status"], row["attempt"]) == (spare, "assigned", 2)
    assert await statuses(own.router, job_id) == {
        late: "timed_out",
        b: "assigned",
        c: "assigned",
        spare: "assigned",
    }
    assert await events_of(own.router, job_id) == {
        late: ("timed_out", running.of(late).assignment_id)
    }
    assert await own.router.reroute_expired(plan) == []
    assert len(plan.calls) == 1

    # The replacement's result completes the job; the late node's result is too late.
    truth = embeddings()
    too_late = await own.guard.take_results(job_id, [result_for(running.of(late), truth)])
    assert (too_late.stored, too_late.verdict) == (0, None)
    assert "too late" in too_late.ignored[0]
    intake = await own.guard.take_results(
        job_id,
        [result_for(a, truth) for a in (running.of(b), running.of(c), replacement)],
    )
    verdict = intake.verdict
    assert verdict is not None
    assert verdict.status == "verified"
    assert sorted(verdict.agreeing) == sorted([b, c, spare])
    assert verdict.timed_out == [late]
    events = await events_of(own.router, job_id)
    assert events[late] == ("timed_out", running.of(late).assignment_id)
    assert {events[n][0] for n in (b, c, spare)} == {"agreed"}


async def open_checked_auto(router: RouterLedger, spare: int) -> tuple[Running, str]:
    """An auto job checked by 3, as the router records it: its leader alone assigned."""
    nodes = node_ids(1 + spare)
    await router.upsert_nodes([heartbeat(n) for n in nodes])
    job = JobRequest(inputs=["a text", "another"])
    assert job.redundancy == "auto"
    unit = whole_job(job, in_s(600))
    made = assignments_for(job, nodes[:1], in_s(60))
    assert await router.open_jobs([NewJob(unit, job.created_at, "running", made)])
    await router.mark_sent([a.assignment_id for a in made])
    return Running(job, nodes, made), nodes[0]


async def test_an_auto_jobs_checks_wait_for_its_leaders_answer(own: Ledgers) -> None:
    running, leader = await open_checked_auto(own.router, spare=3)
    job_id = running.job.job_id
    plan = Planner(running.nodes[1:])
    heard: list[uuid.UUID] = []
    stop = await own.router.listen_due(heard.append)
    try:
        # The leader is still out: the sweep sends nothing.
        assert await own.router.top_up(plan) == []
        assert plan.calls == []

        # The leader's answer is stored: routers hear of it at commit, and the checks go.
        intake = await own.guard.take_results(job_id, [result_for(running.of(leader), TRUTH)])
        assert (intake.stored, intake.verdict) == (1, None)
        for _ in range(50):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard == [job_id]
        checks = await own.router.top_up(plan, heard)
    finally:
        await stop()
    [(job, needed)] = plan.calls
    assert (needed, job.taken) == (2, frozenset([leader]))
    assert len({a.node_id for a in checks}) == 2
    assert leader not in {a.node_id for a in checks}
    assert await own.router.top_up(plan) == []

    # One check agreeing with the leader is a strict majority of 3: verified early.
    decided = await own.guard.take_results(job_id, [result_for(checks[0], TRUTH)])
    assert decided.verdict is not None
    assert decided.verdict.status == "verified"
    assert sorted(decided.verdict.agreeing) == sorted([leader, checks[0].node_id])


async def test_a_silent_leader_is_replaced_by_a_new_leader_alone(own: Ledgers) -> None:
    running, leader = await open_checked_auto(own.router, spare=3)
    job_id = running.job.job_id
    await own.router.pool.execute(
        "UPDATE assignments SET deadline_at = now() - interval '1 second' WHERE job_id = $1",
        job_id,
    )
    plan = Planner(running.nodes[1:])
    [successor] = await own.router.reroute_expired(plan)
    assert successor.node_id != leader
    assert successor.attempt == 2
    assert await events_of(own.router, job_id) == {
        leader: ("timed_out", running.of(leader).assignment_id)
    }
    assert await own.router.top_up(plan) == []

    # Its answer brings the checks, as a first leader's would.
    await own.guard.take_results(job_id, [result_for(successor, TRUTH)])
    checks = await own.router.top_up(plan)
    assert sorted(a.node_id for a in checks) == sorted(
        set(running.nodes) - {leader, successor.node_id}
    )


async def test_reroute_expired_without_a_spare_node_still_times_out(own: Ledgers) -> None:
    running = await open_running(own.router, assignment_deadline_at=in_s(-1))
    plan = Planner([])

    assert await own.router.reroute_expired(plan) == []

    [(_, needed)] = plan.calls
    assert needed == 3
    assert set((await statuses(own.router, running.job.job_id)).values()) == {"timed_out"}
    assert {k for k, _ in (await events_of(own.router, running.job.job_id)).values()} == {
        "timed_out"
    }


async def test_reroute_expired_leaves_jobs_past_their_own_deadline_to_the_guard(
    own: Ledgers,
) -> None:
    running = await open_running(own.router, deadline_at=in_s(-1))
    plan = Planner(node_ids(3))

    assert await own.router.reroute_expired(plan) == []

    assert plan.calls == []
    assert set((await statuses(own.router, running.job.job_id)).values()) == {"assigned"}


async def test_route_waiting_assigns_a_job_once_nodes_are_there(own: Ledgers) -> None:
    nodes = node_ids(3)
    await own.router.upsert_nodes([heartbeat(n) for n in nodes])
    job = job_request(3)
    await own.router.open_job(job, in_s(60), [])
    plan = Planner(nodes)

    made, failed = await own.router.route_waiting(plan)

    assert failed == []
    [(seen, needed)] = plan.calls
    assert (seen.job_id, needed, seen.taken, seen.attempt) == (job.job_id, 3, frozenset(), 1)
    assert sorted(a.node_id for a in made) == sorted(nodes)
    assert await job_status(own.router, job.job_id) == "running"
    assert await statuses(own.router, job.job_id) == dict.fromkeys(nodes, "assigned")
    assert await own.router.route_waiting(plan) == ([], [])


async def test_route_waiting_keeps_a_job_waiting_until_its_deadline(own: Ledgers) -> None:
    job = job_request(3)
    await own.router.open_job(job, in_s(60), [])

    made, failed = await own.router.route_waiting(Planner([]))

    assert (made, failed) == ([], [])
    assert await job_status(own.router, job.job_id) == "waiting"
    assert await own.router.stored_verdict(job.job_id) is None


async def test_route_waiting_fails_a_job_past_its_deadline(own: Ledgers) -> None:
    job = job_request(3)
    await own.router.open_job(job, in_s(-1), [])

    made, failed = await own.router.route_waiting(Planner([]))

    assert made == []
    [verdict] = failed
    assert (verdict.job_id, verdict.status) == (job.job_id, "failed")
    assert verdict.reason.startswith("no eligible nodes before the deadline"), verdict.reason
    assert await job_status(own.router, job.job_id) == "failed"
    assert await own.router.stored_verdict(job.job_id) == verdict
    assert await own.router.route_waiting(Planner([])) == ([], [])


async def test_route_waiting_does_not_assign_a_job_past_its_deadline(own: Ledgers) -> None:
    nodes = node_ids(3)
    await own.router.upsert_nodes([heartbeat(n) for n in nodes])
    job = job_request(3)
    await own.router.open_job(job, in_s(-1), [])

    # Nodes are free again only after the job's deadline (say the router was down).
    made, failed = await own.router.route_waiting(Planner(nodes))
    await own.guard.decide_expired()

    charged = await events_of(own.guard, job.job_id)
    assert (made, charged) == ([], {}), (
        "a waiting job past its deadline must be failed, not given replicas that could only"
        " time out and charge their nodes a 'timed_out' event they could not avoid"
        f" (made {len(made)} assignments, events {charged})"
    )
    assert [v.job_id for v in failed] == [job.job_id]
    assert await job_status(own.router, job.job_id) == "failed"


# -- republishing verdicts ------------------------------------------------------------------


async def test_unpublished_verdicts_until_marked_published(own: Ledgers) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    for job_id in ids:
        verdict = Verdict(job_id=job_id, status="rejected", reason="bad input")
        assert await own.router.reject(job_id, {"task": "embed"}, verdict)

    pending = await own.guard.unpublished_verdicts(0)
    assert [v.job_id for v in pending] == ids, "oldest first"
    assert all(v.status == "rejected" for v in pending)
    assert await own.guard.unpublished_verdicts(3600) == [], "too young to be presumed lost"
    assert [v.job_id for v in await own.guard.unpublished_verdicts(0, limit=2)] == ids[:2]

    await own.guard.mark_published(ids[:2])
    await own.guard.mark_published([])

    assert [v.job_id for v in await own.guard.unpublished_verdicts(0)] == ids[2:]
    published = await own.guard.pool.fetch(
        "SELECT job_id FROM verdicts WHERE published_at IS NOT NULL"
    )
    assert {r["job_id"] for r in published} == set(ids[:2])


async def test_late_results_for_many_decided_jobs_at_once_do_not_exhaust_the_pool(
    own_database: Settings,
) -> None:
    # Every job's third replica arrives after the verdict; the guard takes many jobs at
    # once. Holding one connection while asking the pool for another would deadlock as
    # soon as there are more such jobs than connections.
    router = await RouterLedger.connect(own_database.asyncpg_dsn)
    guard = await GuardLedger.connect(own_database.asyncpg_dsn, max_size=2)
    try:
        jobs = [await open_running(router) for _ in range(6)]
        late = []
        for running in jobs:
            truth = embeddings()
            first, second, third = (result_for(running.of(n), truth) for n in running.nodes)
            await guard.take_results(running.job.job_id, [first, second])
            late.append((running.job.job_id, third))

        intakes = await asyncio.wait_for(
            asyncio.gather(*(guard.take_results(job_id, [r]) for job_id, r in late)),
            timeout=20,
        )

        assert [i.stored for i in intakes] == [1] * len(late)
        assert all(i.verdict is not None and i.verdict.status == "verified" for i in intakes)
    finally:
        await guard.close()
        await router.close()
