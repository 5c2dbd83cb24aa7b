"""The guard's reads and writes: results in, verdicts and reputation events out.

Few round trips on the hot path: one job lock (which also reads a verdict already
made), one statement that stores a batch of results and reads back the job's other
replicas, and one statement that writes the verdict with its reputation events.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from cortensor.adapters.ledger.store import Connection, Ledger, verdict_of
from cortensor.protocol.adjudication import Case, Event, score_late, unchecked
from cortensor.protocol.consensus import Replica
from cortensor.protocol.replication import REPLICAS, REVALIDATE_LIMIT, escalate
from cortensor.schemas import InferenceResult, Verdict

TERMINAL = frozenset({"verified", "rejected", "failed", "inconclusive"})

Judge = Callable[[Case], tuple[Verdict, list[Event]]]
"""A job's case -> its verdict and the reputation events it implies."""

_LOCK = """
SELECT j.job_id, j.status, j.task, j.model, j.redundancy, j.parent_id, j.part, j.auto,
       j.probe, j.params, v.payload, v.revision,
       c.node_id AS c_node_id, c.result_id AS c_result_id, c.assignment_id AS c_assignment_id,
       c.precision AS c_precision, c.output AS c_output
FROM jobs j
LEFT JOIN verdicts v USING (job_id)
LEFT JOIN results c ON c.result_id = v.canonical_result_id
WHERE j.job_id = $1
FOR UPDATE OF j
"""
"""Lock a job; with it come its verdict and canonical result, if it was decided already."""

_TAKE = """
WITH incoming AS (
    SELECT * FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::float8[])
         AS r(result_id, assignment_id, node_id, precision, output, error, elapsed_ms)
), held AS (
    SELECT i.*
    FROM incoming i
    JOIN assignments a
      ON a.assignment_id = i.assignment_id AND a.job_id = $1 AND a.node_id = i.node_id
), stored AS (
    INSERT INTO results (result_id, assignment_id, job_id, node_id, precision, output, error,
                         elapsed_ms)
    SELECT result_id, assignment_id, $1, node_id, precision, output::jsonb, error, elapsed_ms
    FROM held
    ON CONFLICT DO NOTHING
    RETURNING assignment_id
), counted AS (
    UPDATE assignments SET status = 'done', finished_at = now()
    WHERE assignment_id IN (SELECT assignment_id FROM stored) AND status = 'assigned'
    RETURNING assignment_id
)
SELECT true AS incoming, i.assignment_id,
       h.assignment_id IS NOT NULL AS held,
       s.assignment_id IS NOT NULL AS stored,
       c.assignment_id IS NOT NULL AS counted,
       NULL::text AS node_id, NULL::text AS status, NULL::uuid AS result_id,
       NULL::text AS precision, NULL::jsonb AS output, NULL::text AS error,
       NULL::timestamptz AS received_at
FROM incoming i
LEFT JOIN held h USING (assignment_id)
LEFT JOIN stored s USING (assignment_id)
LEFT JOIN counted c USING (assignment_id)
UNION ALL
SELECT false, a.assignment_id, NULL, NULL, NULL,
       a.node_id, a.status, r.result_id, r.precision, r.output, r.error, r.received_at
FROM assignments a LEFT JOIN results r USING (assignment_id)
WHERE $9 AND a.job_id = $1 AND a.status IN ('done', 'timed_out')
  AND a.assignment_id <> ALL($3::uuid[])
ORDER BY incoming DESC, received_at NULLS LAST, assignment_id
"""
"""Store a batch of results (one statement, idempotent) and, when $9, read back the job's
other counted or timed-out replicas. The job is locked by then, so what was committed
before this statement began is all there is: none of the others can be missed."""

_REOPEN = """
WITH picked AS (
    SELECT j.job_id
    FROM jobs j
    JOIN verdicts v USING (job_id)
    JOIN results r ON r.result_id = v.canonical_result_id
    WHERE j.unchecked AND r.node_id = ANY($1::text[]) AND j.model = $2
    ORDER BY j.decided_at DESC LIMIT $3
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs SET unchecked = false, status = 'running', redundancy = $5,
                deadline_at = now() + make_interval(secs => $4)
WHERE job_id IN (SELECT job_id FROM picked)
RETURNING job_id
"""
"""Reopen the unchecked results of nodes that just failed a check: the router gives
each the replicas it lacks, and the guard decides it again."""

_REPLICAS = """
SELECT a.assignment_id, a.node_id, a.status, r.result_id, r.precision, r.output, r.error
FROM assignments a LEFT JOIN results r USING (assignment_id)
WHERE a.job_id = $1 AND a.status IN ('done', 'timed_out')
ORDER BY r.received_at NULLS LAST, a.assignment_id
"""
"""Every counted and timed-out replica of a job."""


@dataclass(slots=True)
class Intake:
    """What happened to one batch of results for one job."""

    stored: int = 0
    ignored: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    """A verdict to publish: new, or the stored one when the job was decided before."""
    new_verdict: bool = False
    parent: Verdict | None = None
    """The verdict of the split job this one completed, if it was its last open part."""
    escalated: int | None = None
    """The redundancy a split vote raised the job to, if it did."""
    reopened: int = 0
    """Unchecked results reopened because a node failed a check here."""


def _replica(row: Any, prefix: str = "") -> Replica:
    return Replica(
        node_id=row[f"{prefix}node_id"],
        result_id=str(row[f"{prefix}result_id"]),
        precision=row[f"{prefix}precision"],
        output=row[f"{prefix}output"],
        error=row.get(f"{prefix}error"),
        assignment_id=str(row[f"{prefix}assignment_id"]),
    )


def _tally(rows: Sequence[Any], intake: Intake) -> set[UUID]:
    """Count what became of each incoming result; returns the assignments now counted."""
    counted: set[UUID] = set()
    for row in rows:
        if not row["incoming"]:
            continue
        if row["counted"]:
            intake.stored += 1
            counted.add(row["assignment_id"])
        elif not row["held"]:
            intake.ignored.append(
                f"assignment {row['assignment_id']}: not held by the node that answered"
            )
        elif not row["stored"]:
            intake.ignored.append(f"assignment {row['assignment_id']}: duplicate result")
        else:
            intake.ignored.append(f"assignment {row['assignment_id']}: result too late")
    return counted


def _in_hand(result: InferenceResult) -> Replica:
    return Replica(
        node_id=result.node_id,
        result_id=str(result.result_id),
        precision=result.precision_label(),
        output=result.output(),
        error=result.error,
        assignment_id=str(result.assignment_id),
    )


def _case(job: Any, rows: Sequence[Any], fresh: Sequence[Replica] = ()) -> Case:
    return Case(
        job_id=job["job_id"],
        task=job["task"],
        model=job["model"],
        redundancy=job["redundancy"],
        replicas=[_replica(r) for r in rows if r["status"] == "done"] + list(fresh),
        timed_out=[
            (str(r["assignment_id"]), r["node_id"]) for r in rows if r["status"] == "timed_out"
        ],
        parent_id=job["parent_id"],
        part=job["part"],
        auto=job["auto"],
        reference=job["params"].get("reference") if job["probe"] else None,
        reference_precision=job["params"].get("reference_precision", "fp32"),
    )


class GuardLedger(Ledger):
    """Ledger access for guards."""

    revalidate_deadline_s = 120.0
    """Time given to re-validate an unchecked result (Settings.revalidate_deadline_s)."""

    async def take_results(
        self, job_id: UUID, results: Sequence[InferenceResult], judge: Judge
    ) -> Intake:
        """Store a job's results idempotently; decide the job as soon as its outcome is
        certain: every replica is in, or a strict majority already agrees.

        A result counts only when it answers an assignment of this job held by the
        node that sent it. Results from unassigned nodes and duplicates are dropped;
        a late one (its assignment timed out) is kept for the record but not counted.
        All of them are reported in `Intake.ignored`. A result arriving after its job
        was verified is held against the canonical answer.
        """
        intake = Intake()
        unique: dict[UUID, InferenceResult] = {}
        for r in results:
            if r.job_id != job_id or r.assignment_id in unique:
                intake.ignored.append(f"result {r.result_id} is a duplicate or for another job")
            else:
                unique[r.assignment_id] = r
        batch = list(unique.values())
        async with self.pool.acquire() as conn, conn.transaction():
            job = await conn.fetchrow(_LOCK, job_id)
            if job is None:
                intake.ignored.append(f"job {job_id} is unknown")
                return intake
            decided = job["status"] in TERMINAL
            if decided and job["payload"] is None:
                # We waited for the lock while another guard decided the job: the lock
                # shows its new status, but the joined verdict comes from the snapshot
                # taken before the wait. Read again, now that the verdict is committed.
                job = await conn.fetchrow(_LOCK, job_id)
            rows = await conn.fetch(
                _TAKE,
                job_id,
                [r.result_id for r in batch],
                [r.assignment_id for r in batch],
                [r.node_id for r in batch],
                [r.precision_label() for r in batch],
                # As JSON text: asyncpg would read nested lists as array dimensions.
                [None if r.error else json.dumps(r.output()) for r in batch],
                [r.error for r in batch],
                [r.elapsed_ms for r in batch],
                not decided,
            )
            counted = _tally(rows, intake)
            fresh = [_in_hand(r) for r in batch if r.assignment_id in counted]
            if decided:
                if fresh and job["c_result_id"] is not None:
                    canonical = _replica(job, prefix="c_")
                    await self.add_events(conn, job_id, score_late(job["task"], canonical, fresh))
                if not job["probe"]:
                    stored = {"payload": job["payload"], "output": job["c_output"]}
                    intake.verdict = verdict_of(stored)
                return intake
            if fresh:
                await self._decide(
                    conn,
                    job,
                    _case(job, [r for r in rows if not r["incoming"]], fresh),
                    judge,
                    intake,
                )
        return intake

    async def _decide(
        self, conn: Connection, job: Any, case: Case, judge: Judge, intake: Intake
    ) -> None:
        """Decide a job whose replicas changed: wait for more, escalate a split vote,
        or conclude."""
        verdict, events = judge(case)
        if verdict.status != "verified" and len(case.replicas) < job["redundancy"]:
            return  # more replicas are on their way
        if verdict.status == "inconclusive":
            more = escalate(job["redundancy"])
            if more is not None:
                await conn.execute(
                    "UPDATE jobs SET redundancy = $2 WHERE job_id = $1", job["job_id"], more
                )
                intake.escalated = more
                return
        final, intake.parent, intake.reopened = await self._conclude(
            conn, job, case, verdict, events
        )
        if not job["probe"]:
            intake.verdict, intake.new_verdict = final, True

    @staticmethod
    def _revised(job: Any, verdict: Verdict) -> Verdict:
        """The verdict of a re-validated job, as its next revision."""
        first = Verdict.model_validate(job["payload"])
        held = first.agreeing[0] if first.agreeing else ""
        outcome = "stands" if held in verdict.agreeing else "was wrong and is corrected"
        return verdict.model_copy(
            update={
                "revision": job["revision"] + 1,
                "reason": f"re-validated: {verdict.reason}; the first answer, by {held}, {outcome}",
            }
        )

    async def _conclude(
        self, conn: Connection, job: Any, case: Case, verdict: Verdict, events: list[Event]
    ) -> tuple[Verdict, Verdict | None, int]:
        """Record a decision (or the revision of one), reopen the unchecked results of any
        node it caught, and stitch the split job it may complete."""
        if job["payload"] is None:
            await self.write_verdict(conn, verdict, events=events, unchecked=unchecked(case))
            if case.reference is not None:
                # A probe's verdict is for the ledger only: publishing it would tell the
                # node, after the fact, which of its jobs were probes.
                await self.mark_published([verdict.job_id], conn)
        else:
            verdict = self._revised(job, verdict)
            await self.revise_verdict(conn, verdict, events=events)
        caught = [node for node, _, kind in events if kind == "disagreed"]
        reopened = 0
        if caught and case.reference is None:
            reopened = len(
                await conn.fetch(
                    _REOPEN,
                    caught,
                    job["model"],
                    REVALIDATE_LIMIT,
                    self.revalidate_deadline_s,
                    REPLICAS,
                )
            )
        parent = None
        if job["parent_id"] is not None:
            parent = await self.complete_parent(
                conn, job["parent_id"], revise=job["payload"] is not None
            )
        return verdict, parent, reopened

    async def expire_stragglers(self, limit: int = 500) -> int:
        """Charge nodes that never answered a job decided without them.

        A job is verified as soon as a strict majority agrees; a replica still out
        when its own deadline passes is timed out and charged like any other.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            late = await conn.fetch(
                """
                SELECT a.assignment_id FROM assignments a JOIN jobs j USING (job_id)
                WHERE a.status = 'assigned' AND a.deadline_at < now()
                  AND j.status NOT IN ('waiting', 'running')
                ORDER BY a.deadline_at LIMIT $1
                FOR UPDATE OF a SKIP LOCKED
                """,
                limit,
            )
            return await self.time_out(conn, [r["assignment_id"] for r in late]) if late else 0

    async def decide_expired(self, judge: Judge, limit: int = 50) -> list[Verdict]:
        """Decide every running job past its deadline with the results it has.

        Replicas still missing are timed out and charged to their nodes. A re-validation
        that found no verdict (its checkers never answered) leaves the first verdict in
        place, still unchecked.
        """
        verdicts = []
        async with self.pool.acquire() as conn, conn.transaction():
            jobs = await conn.fetch(
                """
                SELECT j.job_id, j.task, j.model, j.redundancy, j.parent_id, j.part, j.auto,
                       j.probe, j.params, v.payload, v.revision
                FROM jobs j LEFT JOIN verdicts v USING (job_id)
                WHERE j.status = 'running' AND j.deadline_at < now()
                ORDER BY j.deadline_at LIMIT $1 FOR UPDATE OF j SKIP LOCKED
                """,
                limit,
            )
            parents = set()
            for job in jobs:
                await conn.execute(
                    """
                    UPDATE assignments SET status = 'timed_out', finished_at = now()
                    WHERE job_id = $1 AND status = 'assigned'
                    """,
                    job["job_id"],
                )
                case = _case(job, await conn.fetch(_REPLICAS, job["job_id"]))
                verdict, events = judge(case)
                if job["payload"] is not None and verdict.status != "verified":
                    await self._keep_first_verdict(conn, job, events)
                    continue
                verdict, parent, _ = await self._conclude(conn, job, case, verdict, events)
                if not job["probe"]:
                    verdicts.append(verdict)
                if parent is not None:
                    parents.add(parent.job_id)
                    verdicts.append(parent)
            for parent_id in {j["parent_id"] for j in jobs} - {None, *parents}:
                parent = await self.complete_parent(conn, parent_id)
                if parent is not None:
                    verdicts.append(parent)
        return verdicts

    async def _keep_first_verdict(self, conn: Connection, job: Any, events: list[Event]) -> None:
        first = Verdict.model_validate(job["payload"])
        await conn.execute(
            "UPDATE jobs SET status = $2, reason = $3, unchecked = true WHERE job_id = $1",
            job["job_id"],
            first.status,
            first.reason,
        )
        await self.add_events(conn, job["job_id"], [e for e in events if e[2] == "timed_out"])
