"""The router's reads and writes: nodes, jobs and their assignments."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from cortensor.adapters.ledger.store import Connection, Ledger
from cortensor.protocol.units import NewJob, OpenJob, task_fields, whole_job
from cortensor.schemas import Assignment, JobRequest, NodeHeartbeat, Verdict


@dataclass(frozen=True, slots=True)
class NodeStats:
    """What the ledger says of a node: its standing and its unfinished assignments."""

    score: float
    outstanding: int
    trust: str = "active"
    streaks: Mapping[str, int] = field(default_factory=dict, hash=False)
    """Its run of valid results per model (adaptive replication)."""


PlanReplicas = Callable[[OpenJob, int], Sequence[Assignment] | str]
"""(job, replicas needed) -> the assignments to make, or why none can be made now."""


async def _insert_assignments(conn: Connection, assignments: Sequence[Assignment]) -> None:
    await conn.execute(
        """
        INSERT INTO assignments (assignment_id, job_id, node_id, hw_class, attempt, deadline_at)
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int[],
                             $6::timestamptz[])
        """,
        [a.assignment_id for a in assignments],
        [a.job_id for a in assignments],
        [a.node_id for a in assignments],
        [a.hw_class for a in assignments],
        [a.attempt for a in assignments],
        [a.deadline_at for a in assignments],
    )


class RouterLedger(Ledger):
    """Ledger access for routers."""

    async def upsert_nodes(self, beats: Sequence[NodeHeartbeat]) -> None:
        """Record what nodes announced, and when they were last heard of."""
        if not beats:
            return
        await self.pool.execute(
            """
            INSERT INTO nodes (node_id, hw_class, precision, models, capacity, status, last_seen)
            SELECT b.node_id, b.hw_class, b.precision, b.models::jsonb, b.capacity, b.status, now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[])
                 AS b(node_id, hw_class, precision, models, capacity, status)
            ON CONFLICT (node_id) DO UPDATE SET
                hw_class = excluded.hw_class, precision = excluded.precision,
                models = excluded.models, capacity = excluded.capacity,
                status = excluded.status, last_seen = excluded.last_seen
            """,
            [b.node_id for b in beats],
            [b.hw_class for b in beats],
            [b.precision for b in beats],
            [json.dumps(b.models) for b in beats],
            [b.capacity for b in beats],
            [b.status for b in beats],
        )

    async def node_stats(self) -> dict[str, NodeStats]:
        """Every node's reputation score and count of unfinished assignments."""
        rows = await self.pool.fetch(
            """
            SELECT n.node_id,
                   coalesce((1 + s.agreed) / (2 + s.agreed + s.disagreed + s.timed_out), 0.5)
                       AS score,
                   coalesce(s.trust, 'probation') AS trust,
                   coalesce(a.outstanding, 0) AS outstanding,
                   coalesce(m.streaks, '{}'::jsonb) AS streaks
            FROM nodes n
            LEFT JOIN node_standing s ON s.node_id = n.node_id AND s.model = ''
            LEFT JOIN (
                SELECT node_id, jsonb_object_agg(model, streak) AS streaks
                FROM node_standing WHERE model <> '' GROUP BY node_id
            ) m ON m.node_id = n.node_id
            LEFT JOIN (
                SELECT node_id, count(*) AS outstanding
                FROM assignments WHERE status = 'assigned' GROUP BY node_id
            ) a ON a.node_id = n.node_id
            """
        )
        return {
            r["node_id"]: NodeStats(r["score"], r["outstanding"], r["trust"], r["streaks"])
            for r in rows
        }

    async def open_job(
        self, job: JobRequest, deadline_at: datetime, assignments: Sequence[Assignment]
    ) -> bool:
        """Write one whole job and its first assignments; see `open_jobs`."""
        new = NewJob(
            whole_job(job, deadline_at),
            job.created_at,
            "running" if assignments else "waiting",
            assignments,
        )
        return job.job_id in await self.open_jobs([new])

    async def open_jobs(self, jobs: Sequence[NewJob]) -> set[UUID]:
        """Write jobs and their first assignments atomically, in one statement.

        A job with no assignments waits for nodes. Returns the ids of the jobs written;
        a job that exists already (a redelivered or republished message) is left as it
        is, and so are its assignments. Job ids must be distinct within one call, and a
        part must come after its parent.
        """
        made = [a for new in jobs for a in new.assignments]
        rows = await self.pool.fetch(
            """
            WITH job AS (
                INSERT INTO jobs (job_id, task, model, redundancy, hw_class, inputs, status,
                                  created_at, deadline_at, parent_id, part, params, audio,
                                  auto, probe)
                SELECT j.job_id, j.task, j.model, j.redundancy, j.hw_class, j.inputs::jsonb,
                       j.status, j.created_at, j.deadline_at, j.parent_id, j.part,
                       j.params::jsonb, j.audio, j.auto, j.probe
                FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[],
                            $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[],
                            $10::uuid[], $11::int[], $12::text[], $13::bytea[], $19::bool[],
                            $20::bool[])
                     AS j(job_id, task, model, redundancy, hw_class, inputs, status,
                          created_at, deadline_at, parent_id, part, params, audio, auto, probe)
                ON CONFLICT (job_id) DO NOTHING RETURNING job_id
            ), made AS (
                INSERT INTO assignments (assignment_id, job_id, node_id, hw_class, attempt,
                                         deadline_at)
                SELECT a.assignment_id, a.job_id, a.node_id, a.hw_class, 1, a.deadline_at
                FROM unnest($14::uuid[], $15::uuid[], $16::text[], $17::text[],
                            $18::timestamptz[])
                     AS a(assignment_id, job_id, node_id, hw_class, deadline_at)
                JOIN job USING (job_id)
                RETURNING 1
            )
            SELECT job_id FROM job
            """,
            [n.job.job_id for n in jobs],
            [n.job.task for n in jobs],
            [n.job.model for n in jobs],
            [n.job.redundancy for n in jobs],
            [n.job.hw_class for n in jobs],
            [json.dumps(n.job.inputs) for n in jobs],
            [n.status for n in jobs],
            [n.created_at for n in jobs],
            [n.job.deadline_at for n in jobs],
            [n.job.parent_id for n in jobs],
            [n.job.part for n in jobs],
            [json.dumps(dict(n.job.params)) for n in jobs],
            [n.job.audio for n in jobs],
            [a.assignment_id for a in made],
            [a.job_id for a in made],
            [a.node_id for a in made],
            [a.hw_class for a in made],
            [a.deadline_at for a in made],
            [n.job.auto for n in jobs],
            [n.job.probe for n in jobs],
        )
        return {r["job_id"] for r in rows}

    async def reject(self, job_id: UUID, request: dict[str, Any], verdict: Verdict) -> bool:
        """Record a rejected job and its verdict; False when the job id was known already."""
        task = request.get("task")
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """
                INSERT INTO jobs (job_id, task, model, redundancy, hw_class, inputs, status,
                                  reason, deadline_at, decided_at)
                VALUES ($1, $2, '', 0, '', '[]'::jsonb, 'rejected', '', now(), now())
                ON CONFLICT (job_id) DO NOTHING RETURNING true
                """,
                job_id,
                task[:64] if isinstance(task, str) else "",
            )
            if not inserted:
                return False
            await self.write_verdict(conn, verdict)
        return True

    async def outstanding(self, job_ids: Sequence[UUID]) -> list[Assignment]:
        """The assignments of these jobs still awaited and within their deadline.

        A job delivered again may be one whose assignments were recorded but never
        published (the router stopped in between): sending them again is harmless, as
        a node's result is deduplicated by its assignment id.
        """
        rows = await self.pool.fetch(
            """
            SELECT a.assignment_id, a.job_id, a.node_id, a.hw_class, a.attempt, a.deadline_at,
                   j.task, j.model, j.inputs, j.params, j.audio
            FROM assignments a JOIN jobs j USING (job_id)
            WHERE (a.job_id = ANY($1::uuid[]) OR j.parent_id = ANY($1::uuid[]))
              AND a.status = 'assigned' AND a.deadline_at > now() AND j.status = 'running'
            """,
            list(job_ids),
        )
        return [
            Assignment(
                assignment_id=r["assignment_id"],
                job_id=r["job_id"],
                node_id=r["node_id"],
                task=r["task"],
                model=r["model"],
                hw_class=r["hw_class"],
                deadline_at=r["deadline_at"],
                attempt=r["attempt"],
                **task_fields(r["inputs"], r["params"], r["audio"]),
            )
            for r in rows
        ]

    async def _open_jobs(self, conn: Connection, where: str, *args: Any) -> list[OpenJob]:
        rows = await conn.fetch(
            f"""
            SELECT j.job_id, j.task, j.model, j.redundancy, j.hw_class, j.inputs, j.deadline_at,
                   j.params, j.audio, j.parent_id, j.part, j.auto, j.probe,
                   coalesce(array_agg(a.node_id) FILTER (WHERE a.node_id IS NOT NULL), '{{}}')
                       AS taken,
                   coalesce(max(a.attempt), 0) + 1 AS attempt
            FROM jobs j LEFT JOIN assignments a USING (job_id)
            WHERE {where}
            GROUP BY j.job_id
            """,
            *args,
        )
        return [
            OpenJob(
                job_id=r["job_id"],
                task=r["task"],
                model=r["model"],
                redundancy=r["redundancy"],
                hw_class=r["hw_class"],
                inputs=r["inputs"],
                deadline_at=r["deadline_at"],
                taken=frozenset(r["taken"]),
                attempt=r["attempt"],
                params=r["params"],
                audio=r["audio"],
                parent_id=r["parent_id"],
                part=r["part"],
                auto=r["auto"],
                probe=r["probe"],
            )
            for r in rows
        ]

    async def route_waiting(
        self, plan: PlanReplicas, fail: Callable[[OpenJob, str], Verdict], limit: int = 100
    ) -> tuple[list[Assignment], list[Verdict]]:
        """Give waiting jobs their replicas, or fail those whose deadline has passed.

        Jobs locked by another router are skipped, so several routers share the work.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            ids = await conn.fetch(
                """
                SELECT job_id FROM jobs WHERE status = 'waiting'
                ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED
                """,
                limit,
            )
            if not ids:
                return [], []
            jobs = await self._open_jobs(
                conn, "j.job_id = ANY($1::uuid[])", [r["job_id"] for r in ids]
            )
            now = await conn.fetchval("SELECT now()")
            made: list[Assignment] = []
            failed: list[Verdict] = []
            for job in jobs:
                outcome = plan(job, job.redundancy)
                if job.deadline_at <= now:
                    # Too late to start: replicas assigned now could only time out.
                    why = outcome if isinstance(outcome, str) else "no node took it in time"
                    verdict = fail(job, why)
                    await self.write_verdict(conn, verdict)
                    failed.append(verdict)
                    if job.parent_id is not None:
                        parent = await self.complete_parent(conn, job.parent_id)
                        failed.extend([parent] if parent is not None else [])
                    continue
                if isinstance(outcome, str):
                    continue
                await _insert_assignments(conn, outcome)
                # An auto job's redundancy is what adaptive replication chose for it.
                await conn.execute(
                    "UPDATE jobs SET status = 'running', redundancy = $2 WHERE job_id = $1",
                    job.job_id,
                    len(outcome) if job.auto else job.redundancy,
                )
                made.extend(outcome)
        return made, failed

    async def top_up(self, plan: PlanReplicas, limit: int = 100) -> list[Assignment]:
        """Give running jobs the replicas they lack: more after a split vote, or the
        checks of a result being re-validated."""
        async with self.pool.acquire() as conn, conn.transaction():
            short = await conn.fetch(
                """
                SELECT j.job_id, j.redundancy - c.live AS missing
                FROM jobs j,
                     LATERAL (
                         SELECT count(*) AS live FROM assignments a
                         WHERE a.job_id = j.job_id AND a.status IN ('assigned', 'done')
                     ) c
                WHERE j.status = 'running' AND j.deadline_at > now() AND j.redundancy > c.live
                ORDER BY j.created_at LIMIT $1
                FOR UPDATE OF j SKIP LOCKED
                """,
                limit,
            )
            if not short:
                return []
            return await self._replan(conn, {r["job_id"]: r["missing"] for r in short}, plan)

    async def reroute_expired(self, plan: PlanReplicas, limit: int = 100) -> list[Assignment]:
        """Time out assignments past their deadline and give each a replacement node.

        The late node is charged a `timed_out` event. A job past its own deadline is
        the guard's to decide, so only assignments of jobs still running are touched.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            expired = await conn.fetch(
                """
                SELECT a.assignment_id, a.job_id, a.node_id
                FROM assignments a JOIN jobs j USING (job_id)
                WHERE a.status = 'assigned' AND a.deadline_at < now()
                  AND j.status = 'running' AND j.deadline_at > now()
                ORDER BY a.deadline_at LIMIT $1
                FOR UPDATE OF a, j SKIP LOCKED
                """,
                limit,
            )
            if not expired:
                return []
            await self.time_out(conn, [r["assignment_id"] for r in expired])
            lost: dict[UUID, int] = {}
            for r in expired:
                lost[r["job_id"]] = lost.get(r["job_id"], 0) + 1
            return await self._replan(conn, lost, plan)

    async def _replan(
        self, conn: Connection, needed: dict[UUID, int], plan: PlanReplicas
    ) -> list[Assignment]:
        """Plan and record `needed[job]` more replicas of each of these jobs."""
        made: list[Assignment] = []
        for job in await self._open_jobs(conn, "j.job_id = ANY($1::uuid[])", list(needed)):
            outcome = plan(job, needed[job.job_id])
            if not isinstance(outcome, str):
                await _insert_assignments(conn, outcome)
                made.extend(outcome)
        return made
