"""The router's reads and writes: nodes, jobs and their assignments.

Plans are the protocol core's (cortensor.protocol.planning): these methods load the
jobs to plan under their row locks, hand them to a plan callable, and record the
assignments it returns. What the SQL decides is only what must be atomic: which jobs
this router locks.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from cortensor.adapters.ledger import probes
from cortensor.adapters.ledger.store import (
    DUE_CHANNEL,
    Connection,
    Ledger,
    excused_sql,
    json_text,
)
from cortensor.protocol.outages import MIN_WINDOW_S
from cortensor.protocol.planning import Plan, replicas_due, waiting
from cortensor.protocol.probing import PoolProbe
from cortensor.protocol.units import NewJob, OpenJob, assignments_for, task_fields, whole_job
from cortensor.schemas import ANONYMOUS, Assignment, JobRequest, NodeHeartbeat, Verdict


@dataclass(frozen=True, slots=True)
class NodeStats:
    """What the ledger says of a node: its standing and its unfinished assignments."""

    score: float
    outstanding: int
    trust: str = "active"
    streaks: Mapping[str, int] = field(default_factory=dict, hash=False)
    """Its run of valid results per model (adaptive replication)."""
    offences: int = 0
    """Its quarantines for wrong answers (never trusted alone once it has one)."""


PlanReplicas = Callable[[OpenJob, int], Plan | str]
"""(job, replicas needed) -> the replicas to send, or why none can be sent now."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    """An open job and the count of its replicas, read under its row lock."""

    job: OpenJob
    live: int
    """Replicas out or answered."""
    answered: int
    """Replicas answered."""

    @property
    def due(self) -> int:
        return replicas_due(
            self.job.redundancy, auto=self.job.auto, live=self.live, answered=self.answered
        )


_LOAD = """
SELECT j.job_id, j.task, j.model, j.redundancy, j.hw_class, j.inputs, j.deadline_at,
       j.params, j.audio, j.parent_id, j.part, j.auto, j.probe, j.owner,
       coalesce(array_agg(a.node_id) FILTER (WHERE a.node_id IS NOT NULL), '{}') AS taken,
       coalesce(max(a.attempt), 0) + 1 AS attempt,
       count(*) FILTER (WHERE a.status IN ('assigned', 'done')) AS live,
       count(*) FILTER (WHERE a.status = 'done') AS answered
FROM jobs j LEFT JOIN assignments a USING (job_id)
WHERE j.job_id = ANY($1::uuid[])
GROUP BY j.job_id
ORDER BY j.created_at
"""
"""Open jobs with the nodes they used and the count of their replicas."""

_SHORT = """
SELECT j.job_id, j.redundancy, j.auto, c.live, c.answered
FROM jobs j,
     LATERAL (
         SELECT count(*) FILTER (WHERE a.status IN ('assigned', 'done')) AS live,
                count(*) FILTER (WHERE a.status = 'done') AS answered
         FROM assignments a WHERE a.job_id = j.job_id
     ) c
WHERE j.status = 'running' AND j.deadline_at > now() AND j.redundancy > c.live
ORDER BY j.deadline_at LIMIT $1
"""
"""Running jobs with fewer replicas than their redundancy, and their counts (read
without locks: only those with replicas due now are locked)."""

_LOCK_RUNNING = """
SELECT job_id FROM jobs
WHERE job_id = ANY($1::uuid[]) AND status = 'running' AND deadline_at > now()
ORDER BY created_at
FOR UPDATE SKIP LOCKED
"""
"""Lock running jobs within their deadline; those another router holds are skipped."""


_ASSIGNMENTS = """
SELECT a.assignment_id, a.job_id, a.node_id, a.hw_class, a.attempt, a.deadline_at,
       j.task, j.model, j.inputs, j.params, j.audio
FROM assignments a JOIN jobs j USING (job_id)
"""
"""Assignments with what their message carries."""


def _assignment(r: Any) -> Assignment:
    """The Assignment message of a row of _ASSIGNMENTS."""
    return Assignment(
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


def _assignments(plan: Plan) -> list[Assignment]:
    """The Assignment messages of a plan (new ids, the job's attempt)."""
    return assignments_for(plan.job, plan.targets, plan.deadline_at)


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
        """Every node's reputation score, trust, streaks per model, offences and count of
        unfinished assignments."""
        rows = await self.pool.fetch(
            """
            SELECT n.node_id,
                   cortensor_score(s.agreed, s.disagreed, s.timed_out) AS score,
                   coalesce(s.trust, 'probation') AS trust,
                   coalesce(s.offences, 0) AS offences,
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
            r["node_id"]: NodeStats(
                r["score"], r["outstanding"], r["trust"], r["streaks"], r["offences"]
            )
            for r in rows
        }

    async def open_job(
        self,
        job: JobRequest,
        deadline_at: datetime,
        assignments: Sequence[Assignment],
        *,
        owner: str = ANONYMOUS,
    ) -> bool:
        """Write one whole job of `owner` and its first assignments; see `open_jobs`."""
        new = NewJob(
            whole_job(job, deadline_at, owner=owner),
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
                                  auto, probe, owner)
                SELECT j.job_id, j.task, j.model, j.redundancy, j.hw_class, j.inputs::jsonb,
                       j.status, j.created_at, j.deadline_at, j.parent_id, j.part,
                       j.params::jsonb, j.audio, j.auto, j.probe, j.owner
                FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[],
                            $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[],
                            $10::uuid[], $11::int[], $12::text[], $13::bytea[], $19::bool[],
                            $20::bool[], $21::text[])
                     AS j(job_id, task, model, redundancy, hw_class, inputs, status,
                          created_at, deadline_at, parent_id, part, params, audio, auto, probe,
                          owner)
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
            [json_text(n.job.inputs) for n in jobs],
            [n.status for n in jobs],
            [n.created_at for n in jobs],
            [n.job.deadline_at for n in jobs],
            [n.job.parent_id for n in jobs],
            [n.job.part for n in jobs],
            [json_text(dict(n.job.params)) for n in jobs],
            [n.job.audio for n in jobs],
            [a.assignment_id for a in made],
            [a.job_id for a in made],
            [a.node_id for a in made],
            [a.hw_class for a in made],
            [a.deadline_at for a in made],
            [n.job.auto for n in jobs],
            [n.job.probe for n in jobs],
            [n.job.owner for n in jobs],
        )
        return {r["job_id"] for r in rows}

    async def reject(self, job_id: UUID, request: dict[str, Any], verdict: Verdict) -> bool:
        """Record a rejected job (of the verdict's owner) and its verdict; False when the
        job id was known already."""
        task = request.get("task")
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """
                INSERT INTO jobs (job_id, task, model, redundancy, hw_class, inputs, status,
                                  reason, deadline_at, decided_at, owner)
                VALUES ($1, $2, '', 0, '', '[]'::jsonb, 'rejected', '', now(), now(), $3)
                ON CONFLICT (job_id) DO NOTHING RETURNING true
                """,
                job_id,
                task[:64] if isinstance(task, str) else "",
                verdict.owner,
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
            f"""
            {_ASSIGNMENTS}
            WHERE (a.job_id = ANY($1::uuid[]) OR j.parent_id = ANY($1::uuid[]))
              AND a.status = 'assigned' AND a.deadline_at > now() AND j.status = 'running'
            """,
            list(job_ids),
        )
        return [_assignment(r) for r in rows]

    async def mark_sent(self, assignment_ids: Sequence[UUID]) -> None:
        """Record that the broker confirmed these assignments: from now on a missed
        deadline is their node's (unless an outage excuses it)."""
        if assignment_ids:
            await self.pool.execute(
                "UPDATE assignments SET sent_at = now() WHERE assignment_id = ANY($1::uuid[])",
                list(assignment_ids),
            )

    @staticmethod
    async def _load(conn: Connection, job_ids: Sequence[Any]) -> list[_Loaded]:
        rows = await conn.fetch(_LOAD, list(job_ids))
        return [
            _Loaded(
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
                    owner=r["owner"],
                ),
                r["live"],
                r["answered"],
            )
            for r in rows
        ]

    async def route_waiting(
        self, plan: PlanReplicas, limit: int = 100
    ) -> tuple[list[Assignment], list[Verdict]]:
        """Give waiting jobs their replicas, or fail those whose deadline has passed
        (cortensor.protocol.planning.waiting decides which); returns the assignments
        made and the verdicts of the jobs failed (a split job's, too, if one completed it).

        Jobs locked by another router are skipped, so several routers share the work.
        The earliest deadlines come first: a job's created_at is its client's to set, and
        jobs dated long ago must not keep the others from the sweep.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            ids = await conn.fetch(
                """
                SELECT job_id FROM jobs WHERE status = 'waiting'
                ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED
                """,
                limit,
            )
            if not ids:
                return [], []
            now = await conn.fetchval("SELECT now()")
            made: list[Assignment] = []
            failed: list[Verdict] = []
            for loaded in await self._load(conn, [r["job_id"] for r in ids]):
                job = loaded.job
                fate = waiting(job, now, plan(job, job.redundancy))
                if isinstance(fate, Verdict):
                    await self.write_verdict(conn, fate)
                    failed.append(fate)
                    if job.parent_id is not None:
                        parent = await self.complete_parent(conn, job.parent_id)
                        failed.extend([parent] if parent is not None else [])
                elif fate is not None:
                    assignments = _assignments(fate)
                    await _insert_assignments(conn, assignments)
                    await conn.execute(
                        "UPDATE jobs SET status = 'running', redundancy = $2 WHERE job_id = $1",
                        job.job_id,
                        fate.redundancy,
                    )
                    made.extend(assignments)
        return made, failed

    async def top_up(
        self, plan: PlanReplicas, job_ids: Sequence[UUID] | None = None, limit: int = 100
    ) -> list[Assignment]:
        """Give running jobs the replicas they lack now (planning.replicas_due): an `auto`
        job's checks once its leader has answered, more after a split vote, the checks
        of a result being re-validated. `job_ids` narrows it to jobs a guard named
        (`listen_due`); without it, every running job is looked at."""
        if job_ids is None:
            short = await self.pool.fetch(_SHORT, limit)
            job_ids = [
                r["job_id"]
                for r in short
                if replicas_due(
                    r["redundancy"], auto=r["auto"], live=r["live"], answered=r["answered"]
                )
            ]
        if not job_ids:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            locked = await conn.fetch(_LOCK_RUNNING, list(job_ids))
            if not locked:
                return []
            # Counted after the lock, so that a router that topped a job up just before
            # is seen, and its replicas are not sent twice.
            return await self._replan(conn, [r["job_id"] for r in locked], plan)

    async def reroute_expired(
        self, plan: PlanReplicas, limit: int = 100, *, horizon: datetime | None = None
    ) -> list[Assignment]:
        """Deal with assignments past their deadline, of running jobs within theirs.

        One that an outage overlapped, or that the broker never confirmed
        (cortensor.protocol.outages.excused), is its node's through no fault of its own:
        it keeps its node, gets as long a window again (never past its job's deadline)
        and is returned to be sent again. Any other is timed out, its node charged a
        `timed_out` event, and its job given the replicas it lacks now
        (planning.replicas_due): a replacement for each; an `auto` job's leader that
        timed out is replaced alone, its checks wait for the new leader's answer.

        A job past its own deadline is the guard's to decide, so only assignments of
        jobs still running are touched; and only deadlines before `horizon` (when given:
        cortensor.protocol.outages.judging_horizon) are judged.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            expired = await conn.fetch(
                f"""
                SELECT a.assignment_id, a.job_id, a.node_id, {excused_sql("$2")} AS excused
                FROM assignments a JOIN jobs j USING (job_id)
                WHERE a.status = 'assigned' AND a.deadline_at < LEAST(now(), $3::timestamptz)
                  AND j.status = 'running' AND j.deadline_at > now()
                ORDER BY a.deadline_at LIMIT $1
                FOR UPDATE OF a, j SKIP LOCKED
                """,
                limit,
                self.outage_grace_s,
                horizon,
            )
            if not expired:
                return []
            again = [r["assignment_id"] for r in expired if r["excused"]]
            renewed: list[Assignment] = []
            if again:
                await conn.execute(
                    """
                    UPDATE assignments a
                    SET deadline_at = least(
                            j.deadline_at,
                            now() + greatest(a.deadline_at - a.created_at,
                                             make_interval(secs => $2::float8))),
                        sent_at = NULL
                    FROM jobs j
                    WHERE a.job_id = j.job_id AND a.assignment_id = ANY($1::uuid[])
                    """,
                    again,
                    MIN_WINDOW_S,
                )
                rows = await conn.fetch(
                    f"{_ASSIGNMENTS} WHERE a.assignment_id = ANY($1::uuid[])", again
                )
                renewed = [_assignment(r) for r in rows]
            late = [r for r in expired if not r["excused"]]
            if not late:
                return renewed
            await self.time_out(conn, [r["assignment_id"] for r in late])
            jobs = list(dict.fromkeys(r["job_id"] for r in late))
            return renewed + await self._replan(conn, jobs, plan)

    async def _replan(
        self, conn: Connection, job_ids: Sequence[UUID], plan: PlanReplicas
    ) -> list[Assignment]:
        """Plan and record the replicas these (locked) jobs lack now."""
        made: list[Assignment] = []
        for loaded in await self._load(conn, job_ids):
            if loaded.due < 1:
                continue
            outcome = plan(loaded.job, loaded.due)
            if not isinstance(outcome, str):
                assignments = _assignments(outcome)
                await _insert_assignments(conn, assignments)
                made.extend(assignments)
        return made

    async def listen_due(self, on_due: Callable[[UUID], None]) -> Callable[[], Awaitable[None]]:
        """Call `on_due(job_id)` whenever a guard commits a job that needs replicas sent
        now (store.DUE_CHANNEL); returns the coroutine function that stops listening.
        One connection of the pool is held for it."""
        conn = await self.pool.acquire()

        def heard(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            on_due(UUID(str(payload)))

        await conn.add_listener(DUE_CHANNEL, heard)

        async def stop() -> None:
            await conn.remove_listener(DUE_CHANNEL, heard)
            await self.pool.release(conn)

        return stop

    # The probe pool's reads, on this router's pool (cortensor.adapters.ledger.probes).

    async def verified_jobs(self, models: Collection[str], per_model: int) -> list[PoolProbe]:
        """Recent verified jobs of each model, as probes (probes.verified_jobs)."""
        return await probes.verified_jobs(self, models, per_model)

    async def probe_holders(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """For each pool key, the nodes that held a probe made from it."""
        return await probes.probe_holders(self, keys)

    async def probe_outcomes(self, after: int, limit: int = 10_000) -> list[probes.ProbeOutcome]:
        """The probe events recorded after event id `after`."""
        return await probes.probe_outcomes(self, after, limit)

    async def last_event(self) -> int:
        """The id of the latest reputation event."""
        return await probes.last_event(self)
