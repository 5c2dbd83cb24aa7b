"""The guard's reads and writes: results in, verdicts and reputation events out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import structlog

from cortensor.consensus import Replica
from cortensor.judge import Case, Event
from cortensor.ledger.store import Connection, Ledger
from cortensor.schemas import InferenceResult, Verdict

log = structlog.get_logger(__name__)

TERMINAL = frozenset({"verified", "rejected", "failed", "inconclusive"})


Judge = Callable[[Case], tuple[Verdict, list[Event]]]
"""A job's case -> its verdict and the reputation events it implies."""


@dataclass(slots=True)
class Intake:
    """What happened to one batch of results for one job."""

    stored: int = 0
    ignored: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    """A verdict to publish: new, or the stored one when the job was decided before."""
    new_verdict: bool = False


class GuardLedger(Ledger):
    """Ledger access for guards."""

    async def _load(self, conn: Connection, job_id: UUID) -> Case:
        job = await conn.fetchrow(
            "SELECT task, model, redundancy FROM jobs WHERE job_id = $1", job_id
        )
        rows = await conn.fetch(
            """
            SELECT r.assignment_id, r.result_id, r.node_id, r.precision, r.output, r.error
            FROM results r JOIN assignments a USING (assignment_id)
            WHERE r.job_id = $1 AND a.status = 'done'
            ORDER BY r.received_at, r.result_id
            """,
            job_id,
        )
        timed_out = await conn.fetch(
            """
            SELECT assignment_id, node_id FROM assignments
            WHERE job_id = $1 AND status = 'timed_out'
            """,
            job_id,
        )
        return Case(
            job_id=job_id,
            task=job["task"],
            model=job["model"],
            redundancy=job["redundancy"],
            replicas=[
                Replica(
                    node_id=r["node_id"],
                    result_id=str(r["result_id"]),
                    precision=r["precision"],
                    output=r["output"],
                    error=r["error"],
                    assignment_id=str(r["assignment_id"]),
                )
                for r in rows
            ],
            timed_out=[(str(r["assignment_id"]), r["node_id"]) for r in timed_out],
        )

    async def _decide(self, conn: Connection, job_id: UUID, judge: Judge) -> Verdict:
        verdict, events = judge(await self._load(conn, job_id))
        await self.write_verdict(conn, verdict, events=events)
        return verdict

    async def take_results(
        self, job_id: UUID, results: Sequence[InferenceResult], judge: Judge
    ) -> Intake:
        """Store a job's results idempotently; decide the job once all replicas are in.

        A result counts only when it answers an assignment of this job held by the
        node that sent it; others (unassigned nodes, duplicates) change nothing.
        """
        intake = Intake()
        async with self.pool.acquire() as conn, conn.transaction():
            job = await conn.fetchrow(
                "SELECT status, redundancy FROM jobs WHERE job_id = $1 FOR UPDATE", job_id
            )
            if job is None:
                intake.ignored.append(f"job {job_id} is unknown")
                return intake
            for result in results:
                await self._store(conn, result, intake)
            if job["status"] in TERMINAL:
                intake.verdict = await self.stored_verdict(job_id)
                return intake
            done = await conn.fetchval(
                "SELECT count(*) FROM assignments WHERE job_id = $1 AND status = 'done'", job_id
            )
            if intake.stored and done >= job["redundancy"]:
                intake.verdict = await self._decide(conn, job_id, judge)
                intake.new_verdict = True
        return intake

    async def _store(self, conn: Connection, result: InferenceResult, intake: Intake) -> None:
        held = await conn.fetchrow(
            "SELECT node_id, status FROM assignments WHERE assignment_id = $1 AND job_id = $2",
            result.assignment_id,
            result.job_id,
        )
        if held is None or held["node_id"] != result.node_id:
            intake.ignored.append(
                f"result {result.result_id} from {result.node_id}: no such assignment for that node"
            )
            return
        inserted = await conn.fetchval(
            """
            INSERT INTO results (result_id, assignment_id, job_id, node_id, precision, output,
                                 error, elapsed_ms)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT DO NOTHING RETURNING true
            """,
            result.result_id,
            result.assignment_id,
            result.job_id,
            result.node_id,
            result.precision,
            result.embeddings,
            result.error,
            result.elapsed_ms,
        )
        if not inserted:
            intake.ignored.append(f"result for assignment {result.assignment_id} is a duplicate")
            return
        if held["status"] == "assigned":
            await conn.execute(
                """
                UPDATE assignments SET status = 'done', finished_at = now()
                WHERE assignment_id = $1
                """,
                result.assignment_id,
            )
            intake.stored += 1
        else:
            intake.ignored.append(f"result for assignment {result.assignment_id} came too late")

    async def decide_expired(self, judge: Judge, limit: int = 50) -> list[Verdict]:
        """Decide every running job past its deadline with the results it has.

        Replicas still missing are timed out and charged to their nodes.
        """
        verdicts = []
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT job_id FROM jobs WHERE status = 'running' AND deadline_at < now()
                ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED
                """,
                limit,
            )
            for row in rows:
                await conn.execute(
                    """
                    UPDATE assignments SET status = 'timed_out', finished_at = now()
                    WHERE job_id = $1 AND status = 'assigned'
                    """,
                    row["job_id"],
                )
                verdicts.append(await self._decide(conn, row["job_id"], judge))
        return verdicts
