"""Split jobs in the ledger: a parent and its parts recorded at once, each part decided on
its own, and the parent's verdict stitched by whoever decides its last part.

As in test_ledger_store, most tests share the module's migrated ledger and touch only
jobs of their own; the sweeps (`decide_expired`, `route_waiting`) act on every job of a
database, so their tests get a freshly migrated database each.

Outputs are small: 4-d unit vectors for embed parts (honest replicas share one answer,
disagreeing replicas each draw an orthogonal one) and two-item lists for classify.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from cortensor.adapters.ledger.guard import GuardLedger, Intake
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.protocol.parts import split_job
from cortensor.protocol.replication import MAX_REPLICAS
from cortensor.protocol.units import NewJob, OpenJob
from cortensor.schemas import (
    Assignment,
    InferenceResult,
    JobRequest,
    NodeHeartbeat,
    PartVerdict,
    Verdict,
    utcnow,
)
from cortensor.settings import Settings
from tests.integration.conftest import Ledgers

pytestmark = pytest.mark.postgres

EMBED_MODEL = "all-MiniLM-L6-v2"
CLASSIFY_MODEL = "rag-intent-classifier"
SHARD = 2
"""Texts per part: a job of 2n texts has n parts."""


# -- builders -------------------------------------------------------------------------------


def in_s(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def node_ids(count: int) -> list[str]:
    """Node ids no other test uses."""
    tag = uuid.uuid4().hex[:8]
    return [f"n{tag}-{i}" for i in range(count)]


def heartbeat(node_id: str) -> NodeHeartbeat:
    return NodeHeartbeat(
        node_id=node_id,
        hw_class="cpu-fp32",
        precision="fp32",
        tasks=["embed", "classify"],
        models=[EMBED_MODEL, CLASSIFY_MODEL],
        capacity=4,
        inflight=0,
        processed=0,
        started_at=utcnow(),
    )


def unit_vectors(first: int) -> list[list[float]]:
    """Two 4-d unit vectors, one per text of a part; `first` picks which axes."""
    rows = []
    for axis in (first % 4, (first + 1) % 4):
        row = [0.0] * 4
        row[axis] = 1.0
        rows.append(row)
    return rows


def classes(part: int) -> list[dict[str, Any]]:
    """A classifier's answer for the two texts of a part."""
    return [
        {
            "label": f"intent-{part}-{i}",
            "score": 0.75,
            "top": [
                {"label": f"intent-{part}-{i}", "score": 0.75},
                {"label": "other", "score": 0.25},
            ],
        }
        for i in range(SHARD)
    ]


def assignments_for(unit: OpenJob, nodes: Sequence[str], deadline_at: datetime) -> list[Assignment]:
    return [
        Assignment(
            job_id=unit.job_id,
            node_id=node,
            task=unit.task,
            model=unit.model,
            inputs=list(unit.inputs),
            top_k=unit.params.get("top_k", 5),
            hw_class="cpu-fp32",
            deadline_at=deadline_at,
        )
        for node in nodes
    ]


def result_for(assignment: Assignment, output: Any) -> InferenceResult:
    field = "classes" if assignment.task == "classify" else "embeddings"
    return InferenceResult.model_validate(
        {
            "assignment_id": assignment.assignment_id,
            "job_id": assignment.job_id,
            "node_id": assignment.node_id,
            "task": assignment.task,
            "model": assignment.model,
            "hw_class": "cpu-fp32",
            "precision": "fp32",
            field: output,
            "elapsed_ms": 5.0,
        }
    )


@dataclass
class Split:
    """A split job as recorded: its parent, its parts and each part's assignments."""

    job: JobRequest
    parent: OpenJob
    parts: list[OpenJob]
    nodes: list[list[str]]
    """The nodes of each part, in part order."""
    assignments: list[list[Assignment]]
    opened: list[NewJob]

    @property
    def parent_id(self) -> uuid.UUID:
        return self.parent.job_id

    def results(self, part: int, outputs: Sequence[Any]) -> list[InferenceResult]:
        """One result per replica of `part`, the i-th replica answering outputs[i]."""
        return [result_for(a, out) for a, out in zip(self.assignments[part], outputs, strict=True)]


def plan_split(
    parts: int = 3,
    *,
    task: str = "embed",
    redundancy: int = 3,
    deadline_at: datetime | None = None,
    waiting: Sequence[int] = (),
) -> Split:
    """A job of `parts` shards, each part on `redundancy` nodes of its own; the parts in
    `waiting` found no node and wait."""
    job = JobRequest(
        task=task,
        inputs=[f"text {i}" for i in range(SHARD * parts)],
        redundancy=redundancy,
        top_k=2,
    )
    deadline = deadline_at or in_s(600)
    parent, units = split_job(job, deadline, shard_inputs=SHARD)
    assert parent is not None
    assert len(units) == parts
    nodes = [node_ids(redundancy) for _ in units]
    made = [
        [] if unit.part in waiting else assignments_for(unit, names, deadline)
        for unit, names in zip(units, nodes, strict=True)
    ]
    opened = [NewJob(parent, job.created_at, "split")] + [
        NewJob(unit, job.created_at, "waiting" if not mine else "running", mine)
        for unit, mine in zip(units, made, strict=True)
    ]
    return Split(job, parent, units, nodes, made, opened)


async def open_split(router: RouterLedger, parts: int = 3, **options: Any) -> Split:
    """Register the nodes of a fresh split job and record it."""
    split = plan_split(parts, **options)
    await router.upsert_nodes([heartbeat(n) for names in split.nodes for n in names])
    written = await router.open_jobs(split.opened)
    assert written == {split.parent_id, *(u.job_id for u in split.parts)}
    await router.mark_sent([a.assignment_id for new in split.opened for a in new.assignments])
    return split


async def verify(guard: GuardLedger, split: Split, part: int) -> Intake:
    """Every replica of `part` returns the same honest answer."""
    truth = classes(part) if split.job.task == "classify" else unit_vectors(part)
    intake = await guard.take_results(
        split.parts[part].job_id, split.results(part, [truth] * split.job.redundancy)
    )
    assert intake.verdict is not None
    assert intake.verdict.status == "verified"
    return intake


def honest_output(split: Split) -> list[Any]:
    """The parent's output when every part is verified: the parts' answers in order."""
    each = classes if split.job.task == "classify" else unit_vectors
    return [item for part in range(len(split.parts)) for item in each(part)]


async def job_row(ledger: Any, job_id: uuid.UUID) -> Any:
    return await ledger.pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)


async def verdict_count(ledger: Any, job_id: uuid.UUID) -> int:
    count: int = await ledger.pool.fetchval(
        "SELECT count(*) FROM verdicts WHERE job_id = $1", job_id
    )
    return count


# -- recording a split job ------------------------------------------------------------------


async def test_open_jobs_writes_a_parent_and_its_parts_once(router: RouterLedger) -> None:
    split = plan_split(3)
    await router.upsert_nodes([heartbeat(n) for names in split.nodes for n in names])

    written = await router.open_jobs(split.opened)

    assert written == {split.parent_id, *(u.job_id for u in split.parts)}
    parent = await job_row(router, split.parent_id)
    assert (parent["status"], parent["inputs"], parent["parent_id"], parent["part"]) == (
        "split",
        [],
        None,
        None,
    )
    assert parent["params"] == {"parts": 3}
    assert (parent["task"], parent["model"], parent["redundancy"]) == ("embed", EMBED_MODEL, 3)
    for index, unit in enumerate(split.parts):
        row = await job_row(router, unit.job_id)
        assert (row["status"], row["parent_id"], row["part"]) == ("running", split.parent_id, index)
        assert row["inputs"] == split.job.inputs[SHARD * index : SHARD * (index + 1)]
        assert row["params"] == {"first_input": SHARD * index, "inputs": SHARD}
        assert row["deadline_at"] == split.parent.deadline_at
    rows = await router.pool.fetch(
        """
        SELECT a.assignment_id, a.job_id, a.node_id, a.status FROM assignments a
        JOIN jobs j USING (job_id) WHERE j.parent_id = $1 OR j.job_id = $1
        """,
        split.parent_id,
    )
    made = [a for mine in split.assignments for a in mine]
    assert {(r["assignment_id"], r["job_id"], r["node_id"], r["status"]) for r in rows} == {
        (a.assignment_id, a.job_id, a.node_id, "assigned") for a in made
    }

    # The same message again (redelivered), even planned on other replicas, writes nothing.
    again = [
        replace(new, assignments=assignments_for(new.job, names, in_s(60)))
        for new, names in zip(split.opened[1:], split.nodes, strict=True)
    ]
    assert await router.open_jobs([split.opened[0], *again]) == set()
    assert await router.pool.fetchval(
        "SELECT count(*) FROM assignments a JOIN jobs j USING (job_id) WHERE j.parent_id = $1",
        split.parent_id,
    ) == len(made)

    # A redelivered job gets its parts' still-awaited assignments sent again.
    awaited = await router.outstanding([split.parent_id])
    assert {a.assignment_id for a in awaited} == {a.assignment_id for a in made}
    for a in awaited:
        unit = next(u for u in split.parts if u.job_id == a.job_id)
        assert (a.task, a.model, a.inputs, a.audio) == ("embed", EMBED_MODEL, unit.inputs, None)


async def test_outstanding_leaves_out_decided_parts(
    router: RouterLedger, guard: GuardLedger
) -> None:
    split = await open_split(router, 3)
    await verify(guard, split, 1)

    awaited = await router.outstanding([split.parent_id])

    assert {a.assignment_id for a in awaited} == {
        a.assignment_id for part in (0, 2) for a in split.assignments[part]
    }
    assert await router.outstanding([uuid.uuid4()]) == []


async def test_a_classify_split_sends_its_options_with_every_part(router: RouterLedger) -> None:
    split = await open_split(router, 2, task="classify")

    awaited = await router.outstanding([split.parent_id])

    assert sorted((a.job_id, a.node_id, tuple(a.inputs)) for a in awaited) == sorted(
        (unit.job_id, node, tuple(unit.inputs))
        for unit, names in zip(split.parts, split.nodes, strict=True)
        for node in names
    )
    assert {(a.task, a.model, a.top_k) for a in awaited} == {("classify", CLASSIFY_MODEL, 2)}
    assert (await job_row(router, split.parent_id))["params"] == {"top_k": 2, "parts": 2}


# -- the guard: parts decided one by one, the parent stitched at the last -------------------


async def test_the_last_part_decided_stitches_the_parent(
    router: RouterLedger, guard: GuardLedger
) -> None:
    split = await open_split(router, 3)

    # Parts are decided in any order: the parent waits for the last.
    intakes = {part: await verify(guard, split, part) for part in (2, 0, 1)}

    for part, intake in intakes.items():
        verdict = intake.verdict
        assert verdict is not None
        assert intake.new_verdict is True
        assert (verdict.job_id, verdict.parent_id, verdict.part) == (
            split.parts[part].job_id,
            split.parent_id,
            part,
        )
        assert verdict.embeddings == unit_vectors(part)
        assert sorted(verdict.agreeing) == sorted(split.nodes[part])
        stored = await guard.stored_verdict(split.parts[part].job_id)
        assert stored == verdict
    assert intakes[2].parent is None
    assert intakes[0].parent is None
    parent = intakes[1].parent
    assert parent is not None
    assert parent.status == "verified"
    assert parent.reason == "all 3 parts verified"
    assert (parent.job_id, parent.task, parent.model) == (split.parent_id, "embed", EMBED_MODEL)
    assert (parent.parent_id, parent.part, parent.canonical_result_id) == (None, None, None)
    assert parent.embeddings == honest_output(split)
    assert parent.replicas == 9
    assert sorted(parent.agreeing) == sorted(n for names in split.nodes for n in names)
    assert [(p.part, p.job_id, p.status) for p in parent.parts] == [
        (i, unit.job_id, "verified") for i, unit in enumerate(split.parts)
    ]
    assert [sorted(p.agreeing) for p in parent.parts] == [sorted(n) for n in split.nodes]
    assert [(p.first_input, p.inputs) for p in parent.parts] == [(0, 2), (2, 2), (4, 2)]

    # The parent has no canonical result: its stitched output is kept in the payload.
    assert await guard.stored_verdict(split.parent_id) == parent
    row = await guard.pool.fetchrow(
        "SELECT status, canonical_result_id, payload FROM verdicts WHERE job_id = $1",
        split.parent_id,
    )
    assert (row["status"], row["canonical_result_id"]) == ("verified", None)
    assert row["payload"]["embeddings"] == honest_output(split)
    parent_row = await job_row(guard, split.parent_id)
    assert parent_row["status"] == "verified"
    assert parent_row["decided_at"] is not None

    # A redelivered part changes nothing and stitches nothing again.
    again = await guard.take_results(split.parts[1].job_id, split.results(1, [unit_vectors(1)] * 3))
    assert (again.stored, again.new_verdict, again.parent) == (0, False, None)
    assert await verdict_count(guard, split.parent_id) == 1
    assert await guard.stored_verdict(split.parent_id) == parent


async def test_a_part_verified_by_a_majority_counts_its_dissenter(
    router: RouterLedger, guard: GuardLedger
) -> None:
    split = await open_split(router, 2)
    await verify(guard, split, 0)
    liar = unit_vectors(3)

    intake = await guard.take_results(
        split.parts[1].job_id,
        split.results(1, [unit_vectors(1), liar, unit_vectors(1)]),
    )

    parent = intake.parent
    assert parent is not None
    assert parent.status == "verified"
    assert parent.embeddings == honest_output(split)
    a, b, c = split.nodes[1]
    assert parent.parts[1] == PartVerdict(
        part=1,
        job_id=split.parts[1].job_id,
        status="verified",
        reason="2 of 3 replicas agree",
        first_input=2,
        inputs=2,
        agreeing=parent.parts[1].agreeing,
        disagreeing=[b],
    )
    assert sorted(parent.parts[1].agreeing) == sorted([a, c])
    assert parent.disagreeing == [b]


async def test_an_inconclusive_part_makes_the_parent_inconclusive(
    router: RouterLedger, guard: GuardLedger
) -> None:
    split = await open_split(router, 3, redundancy=MAX_REPLICAS)
    await verify(guard, split, 0)
    await verify(guard, split, 2)

    # As many replicas as the cap allows, every answer different: no majority.
    angles = [[math.cos(k * 0.5), math.sin(k * 0.5), 0.0, 0.0] for k in range(MAX_REPLICAS)]
    intake = await guard.take_results(
        split.parts[1].job_id,
        split.results(1, [[row, [0.0, 0.0, 1.0, 0.0]] for row in angles]),
    )

    assert intake.verdict is not None
    assert intake.verdict.status == "inconclusive"
    assert (intake.verdict.parent_id, intake.verdict.part) == (split.parent_id, 1)
    parent = intake.parent
    assert parent is not None
    assert parent.status == "inconclusive"
    assert parent.reason.startswith("1 of 3 parts inconclusive (part 1): no strict majority")
    assert parent.embeddings is None
    assert parent.output() is None
    assert [p.status for p in parent.parts] == ["verified", "inconclusive", "verified"]
    assert await guard.stored_verdict(split.parent_id) == parent
    assert (await job_row(guard, split.parent_id))["status"] == "inconclusive"


async def test_classify_parts_stitch_their_classes_in_order(
    router: RouterLedger, guard: GuardLedger
) -> None:
    split = await open_split(router, 2, task="classify")

    first = await verify(guard, split, 1)
    last = await verify(guard, split, 0)

    assert first.parent is None
    assert first.verdict is not None
    assert first.verdict.output() == classes(1)
    parent = last.parent
    assert parent is not None
    assert parent.status == "verified"
    assert (parent.task, parent.model) == ("classify", CLASSIFY_MODEL)
    assert parent.output() == honest_output(split)
    assert [c.label for c in parent.classes or []] == [
        "intent-0-0",
        "intent-0-1",
        "intent-1-0",
        "intent-1-1",
    ]
    assert await guard.stored_verdict(split.parent_id) == parent


async def test_two_guards_deciding_the_last_parts_stitch_the_parent_once(
    router: RouterLedger, guard: GuardLedger, ledger_settings: Settings
) -> None:
    other = await GuardLedger.connect(ledger_settings.asyncpg_dsn)
    try:
        for _ in range(10):
            split = await open_split(router, 3)
            await verify(guard, split, 0)

            intakes = await asyncio.gather(verify(guard, split, 1), verify(other, split, 2))

            stitched = [i.parent for i in intakes if i.parent is not None]
            assert len(stitched) == 1, [i.parent for i in intakes]
            [parent] = stitched
            assert parent.status == "verified"
            assert parent.embeddings == honest_output(split)
            assert await verdict_count(guard, split.parent_id) == 1
            assert await guard.stored_verdict(split.parent_id) == parent
    finally:
        await other.close()


# -- deadlines ------------------------------------------------------------------------------


async def test_decide_expired_fails_a_silent_part_and_the_last_part_stitches(
    own: Ledgers,
) -> None:
    split = await open_split(own.router, 3)
    late = split.parts[1].job_id
    await own.router.pool.execute(
        "UPDATE jobs SET deadline_at = now() - interval '1 second' WHERE job_id = $1", late
    )

    [failed] = await own.guard.decide_expired()

    assert (failed.job_id, failed.status, failed.parent_id, failed.part) == (
        late,
        "failed",
        split.parent_id,
        1,
    )
    assert sorted(failed.timed_out) == sorted(split.nodes[1])
    assert (await job_row(own.guard, split.parent_id))["status"] == "split"
    assert await own.guard.stored_verdict(split.parent_id) is None

    assert (await verify(own.guard, split, 0)).parent is None
    parent = (await verify(own.guard, split, 2)).parent

    assert parent is not None
    assert parent.status == "failed"
    assert parent.reason.startswith("1 of 3 parts failed (part 1): no node returned a result")
    assert [p.status for p in parent.parts] == ["verified", "failed", "verified"]
    assert sorted(parent.timed_out) == sorted(split.nodes[1])
    assert await own.guard.stored_verdict(split.parent_id) == parent


async def test_decide_expired_on_every_part_completes_the_parent(own: Ledgers) -> None:
    split = await open_split(own.router, 3, deadline_at=in_s(-1))

    verdicts = await own.guard.decide_expired()

    by_job = {v.job_id: v for v in verdicts}
    assert len(verdicts) == 4
    assert set(by_job) == {split.parent_id, *(u.job_id for u in split.parts)}
    parent = by_job[split.parent_id]
    assert parent.status == "failed"
    assert parent.reason.startswith("3 of 3 parts failed (part 0, 1, 2):")
    assert parent.replicas == 0
    assert sorted(parent.timed_out) == sorted(n for names in split.nodes for n in names)
    assert [(p.part, p.status) for p in parent.parts] == [(i, "failed") for i in range(3)]
    assert await own.guard.stored_verdict(split.parent_id) == parent
    assert (await job_row(own.guard, split.parent_id))["status"] == "failed"
    assert await own.guard.decide_expired() == []
    assert await verdict_count(own.guard, split.parent_id) == 1


async def test_a_stitched_verdict_is_republished_with_its_output(own: Ledgers) -> None:
    split = await open_split(own.router, 2)
    await verify(own.guard, split, 0)
    parent = (await verify(own.guard, split, 1)).parent
    assert parent is not None

    pending = {v.job_id: v for v in await own.guard.unpublished_verdicts(0)}

    assert set(pending) == {split.parent_id, *(u.job_id for u in split.parts)}
    assert pending[split.parent_id] == parent
    assert pending[split.parent_id].embeddings == honest_output(split)
    assert pending[split.parts[1].job_id].embeddings == unit_vectors(1)


class NoNodes:
    """A `plan` callback for a network with no free node."""

    def __call__(self, job: OpenJob, needed: int) -> str:
        return f"needs {needed} node(s); none available"


async def test_route_waiting_failing_the_last_waiting_part_completes_the_parent(
    own: Ledgers,
) -> None:
    split = await open_split(own.router, 3, waiting=[2])
    await verify(own.guard, split, 0)
    await verify(own.guard, split, 1)
    assert (await job_row(own.router, split.parts[2].job_id))["status"] == "waiting"

    # Still within the deadline: the part keeps waiting and the parent stays open.
    assert await own.router.route_waiting(NoNodes()) == ([], [])
    await own.router.pool.execute(
        "UPDATE jobs SET deadline_at = now() - interval '1 second' WHERE job_id = $1",
        split.parts[2].job_id,
    )

    made, failed = await own.router.route_waiting(NoNodes())

    assert made == []
    assert [v.job_id for v in failed] == [split.parts[2].job_id, split.parent_id]
    part, parent = failed
    assert part.status == "failed"
    assert parent.status == "failed"
    assert parent.reason.startswith("1 of 3 parts failed (part 2): no eligible nodes")
    assert [p.status for p in parent.parts] == ["verified", "verified", "failed"]
    assert await own.router.stored_verdict(split.parent_id) == parent
    assert (await job_row(own.router, split.parent_id))["status"] == "failed"
    assert await own.router.route_waiting(NoNodes()) == ([], [])


async def test_route_waiting_failing_every_waiting_part_stitches_once(own: Ledgers) -> None:
    split = await open_split(own.router, 3, waiting=[0, 1, 2], deadline_at=in_s(-1))

    made, failed = await own.router.route_waiting(NoNodes())

    assert made == []
    by_job = {v.job_id: v for v in failed}
    assert len(failed) == 4
    assert set(by_job) == {split.parent_id, *(u.job_id for u in split.parts)}
    parent = by_job[split.parent_id]
    assert parent.status == "failed"
    assert parent.reason.startswith("3 of 3 parts failed (part 0, 1, 2): no eligible nodes")
    assert await verdict_count(own.router, split.parent_id) == 1
    assert await own.router.stored_verdict(split.parent_id) == parent


async def test_a_part_failed_while_waiting_names_its_parent(own: Ledgers) -> None:
    split = await open_split(own.router, 2, waiting=[0, 1], deadline_at=in_s(-1))

    _, failed = await own.router.route_waiting(NoNodes())

    parts = {v.job_id: v for v in failed if v.job_id != split.parent_id}
    assert len(parts) == 2
    for index, unit in enumerate(split.parts):
        verdict: Verdict = parts[unit.job_id]
        assert (verdict.parent_id, verdict.part) == (split.parent_id, index)
