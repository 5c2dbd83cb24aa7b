"""The guard's reads and writes: results in, verdicts and reputation events out.

The ledger loads a job's case under its row lock, asks the protocol core
(cortensor.protocol.adjudication.adjudicate) what to do, and applies the answer; no
decision is made here. Few round trips on the hot path: one job lock (which also reads
a verdict already made), one statement that stores a batch of results and reads back the
job's other replicas, and one statement that writes the verdict with its reputation
events.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from cortensor.adapters.ledger.retention import purge_content
from cortensor.adapters.ledger.store import (
    Connection,
    Decision,
    Ledger,
    excused_sql,
    json_text,
    verdict_of,
)
from cortensor.errors import BadInput
from cortensor.protocol.adjudication import (
    Case,
    Conclude,
    Escalate,
    Outcome,
    Wait,
    adjudicate,
    at_deadline,
    score_late,
)
from cortensor.protocol.consensus import Replica
from cortensor.schemas import TERMINAL_STATUSES, InferenceResult, Verdict, printable
from cortensor.settings import REVALIDATE_DEADLINE_S

TERMINAL = frozenset(TERMINAL_STATUSES)

UNSTORABLE: tuple[type[asyncpg.DataError], ...] = (
    asyncpg.CharacterNotInRepertoireError,
    asyncpg.UntranslatableCharacterError,
    asyncpg.InvalidTextRepresentationError,
    asyncpg.NumericValueOutOfRangeError,
    asyncpg.StringDataRightTruncationError,
)
"""PostgreSQL's refusals of a value sent to it (NUL in text, \\u0000 or NaN in jsonb, a
number out of range): the value's fault. asyncpg raises DataError itself for a value it
cannot encode (a lone surrogate)."""


@contextlib.asynccontextmanager
async def refusing_unstorable() -> AsyncIterator[None]:
    """Turn the ledger's refusal of a value into BadInput: no retry stores it, so the
    guard stops its delivery (and stores the rest of its batch without it)."""
    try:
        yield
    except asyncpg.DataError as exc:
        if type(exc) is not asyncpg.DataError and not isinstance(exc, UNSTORABLE):
            raise
        raise BadInput(f"the ledger cannot store this: {printable(str(exc), 300)}") from exc


_LOCK = """
SELECT j.job_id, j.status, j.task, j.model, j.redundancy, j.parent_id, j.part, j.auto,
       j.probe, j.params, j.owner, j.created_at, v.payload, v.revision,
       c.node_id AS c_node_id, c.result_id AS c_result_id, c.assignment_id AS c_assignment_id,
       c.precision AS c_precision, c.output AS c_output
FROM jobs j
LEFT JOIN verdicts v USING (job_id)
LEFT JOIN results c ON c.result_id = v.canonical_result_id
WHERE j.job_id = ANY($1::uuid[])
ORDER BY j.job_id
FOR UPDATE OF j
"""
"""Lock jobs, in the order of their ids (so that two guards taking overlapping batches
wait for each other rather than deadlock); with each come its verdict and canonical
result, if it was decided already."""

_TAKE = """
WITH incoming AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::float8[], $10::text[]) WITH ORDINALITY
         AS r(job_id, result_id, assignment_id, node_id, precision, output, error, elapsed_ms,
              hw_class, ord)
), held AS (
    SELECT i.*
    FROM incoming i
    JOIN assignments a
      ON a.assignment_id = i.assignment_id AND a.job_id = i.job_id AND a.node_id = i.node_id
     AND a.hw_class = i.hw_class
), stored AS (
    INSERT INTO results (result_id, assignment_id, job_id, node_id, precision, output, error,
                         elapsed_ms)
    SELECT result_id, assignment_id, job_id, node_id, precision, output::jsonb, error,
           elapsed_ms
    FROM held
    ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING assignment_id
), counted AS (
    UPDATE assignments SET status = 'done', finished_at = now()
    WHERE assignment_id IN (SELECT assignment_id FROM stored) AND status = 'assigned'
    RETURNING assignment_id
)
SELECT true AS incoming, i.job_id, i.assignment_id,
       h.assignment_id IS NOT NULL AS held,
       s.assignment_id IS NOT NULL AS stored,
       c.assignment_id IS NOT NULL AS counted,
       NULL::text AS node_id, NULL::text AS status, NULL::uuid AS result_id,
       NULL::text AS precision, NULL::jsonb AS output, NULL::text AS error,
       NULL::bigint AS seq
FROM incoming i
LEFT JOIN held h USING (assignment_id)
LEFT JOIN stored s USING (assignment_id)
LEFT JOIN counted c USING (assignment_id)
UNION ALL
SELECT false, a.job_id, a.assignment_id, NULL, NULL, NULL,
       a.node_id, a.status, r.result_id, r.precision, r.output, r.error, r.seq
FROM assignments a LEFT JOIN results r USING (assignment_id)
WHERE a.job_id = ANY($9::uuid[]) AND a.assignment_id <> ALL($3::uuid[])
ORDER BY incoming DESC, seq NULLS LAST, assignment_id
"""
"""Store the results of several jobs (one statement, idempotent) and read back the other
replicas of the jobs in $9 (those not decided yet): counted, timed out, or still out.
A result is held only by the node its assignment went to, in the hardware class it was
sent to that node for ($10): its precision (schemas.InferenceResult, one per class) is
then the class's, not one a node names to be weighed with a looser tolerance.
The jobs are locked by then, so what was committed before this statement began is all
there is: none of the others can be missed."""

_REOPEN = """
WITH picked AS (
    SELECT j.job_id
    FROM jobs j
    JOIN verdicts v USING (job_id)
    JOIN results r ON r.result_id = v.canonical_result_id
    WHERE j.unchecked AND r.node_id = ANY($1::text[]) AND j.model = $2
      AND j.purged_at IS NULL
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
ORDER BY r.seq NULLS LAST, a.assignment_id
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
    unheld: list[str] = field(default_factory=list)
    """The nodes that answered an assignment they do not hold (another node's, replayed
    under their own signature, or one made up): refused, and counted by the guard."""
    submitted_at: datetime | None = None
    """When the job was recorded (its verdict's latency is measured from it)."""


def _replica(row: Any, prefix: str = "") -> Replica:
    return Replica(
        node_id=row[f"{prefix}node_id"],
        result_id=str(row[f"{prefix}result_id"]),
        precision=row[f"{prefix}precision"],
        output=row[f"{prefix}output"],
        error=row.get(f"{prefix}error"),
        assignment_id=str(row[f"{prefix}assignment_id"]),
    )


def _tally(rows: Sequence[Any], intake: Intake, senders: Mapping[UUID, str]) -> set[UUID]:
    """Count what became of each incoming result (`senders`: assignment -> the node that
    answered it); returns the assignments now counted."""
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
            intake.unheld.append(senders[row["assignment_id"]])
        elif not row["stored"]:
            intake.ignored.append(f"assignment {row['assignment_id']}: duplicate result")
        else:
            intake.ignored.append(f"assignment {row['assignment_id']}: result too late")
    return counted


def unique_results(
    job_id: UUID, results: Sequence[InferenceResult], intake: Intake
) -> list[InferenceResult]:
    """A job's results, one per assignment; the others are noted in `intake`."""
    unique: dict[UUID, InferenceResult] = {}
    for r in results:
        if r.job_id != job_id or r.assignment_id in unique:
            intake.ignored.append(f"result {r.result_id} is a duplicate or for another job")
        else:
            unique[r.assignment_id] = r
    return list(unique.values())


def _plain(job: Any, outcome: Outcome) -> bool:
    """Whether an outcome only closes its job with a verdict to publish (and events):
    such outcomes of many jobs are written in one statement."""
    return (
        isinstance(outcome, Conclude)
        and outcome.publish
        and not (outcome.keep_first or outcome.revision or outcome.reopen)
        and job["parent_id"] is None
    )


def _in_hand(result: InferenceResult) -> Replica:
    return Replica(
        node_id=result.node_id,
        result_id=str(result.result_id),
        precision=result.precision_label(),
        output=result.output(),
        error=result.error,
        assignment_id=str(result.assignment_id),
    )


def _case(
    job: Any, rows: Sequence[Any], fresh: Sequence[Replica] = (), *, expired: bool = False
) -> Case:
    """A job's case from its locked row, its other replicas' rows and the new results."""
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
        pending=sum(r["status"] == "assigned" for r in rows),
        first=None if job["payload"] is None else Verdict.model_validate(job["payload"]),
        expired=expired,
        owner=job["owner"],
    )


class GuardLedger(Ledger):
    """Ledger access for guards."""

    revalidate_deadline_s = REVALIDATE_DEADLINE_S
    """Time given to re-validate an unchecked result (Settings.revalidate_deadline_s)."""

    async def take_results(self, job_id: UUID, results: Sequence[InferenceResult]) -> Intake:
        """Store a job's results idempotently and act on the job's outcome (see
        cortensor.protocol.adjudication.adjudicate), all in one transaction.

        A result counts only when it answers an assignment of this job held by the
        node that sent it. Results from unassigned nodes and duplicates are dropped;
        a late one (its assignment timed out) is kept for the record but not counted.
        All of them are reported in `Intake.ignored`. A result arriving after its job
        was verified is held against the canonical answer. When the job needs replicas
        sent now (an `auto` job's checks after its leader answered, a split vote's extra
        replicas, reopened results' checks), routers hear of it at commit (`notify_due`).
        A value the ledger refuses raises BadInput (see `refusing_unstorable`), and
        nothing of the batch is stored.
        """
        return (await self.take_many({job_id: results}))[job_id]

    async def take_many(
        self, results: Mapping[UUID, Sequence[InferenceResult]]
    ) -> dict[UUID, Intake]:
        """`take_results` for several jobs (job id -> its results) in one transaction,
        in as few statements as their outcomes allow: one lock, one store, one write of
        the verdicts that close jobs plainly, one of late results' events; anything
        else (a split vote, a re-validation, a split job's part) is applied job by job.
        Any failure fails them all, none stored: the caller may take each job alone."""
        intakes = {job_id: Intake() for job_id in results}
        batch: dict[UUID, list[InferenceResult]] = {}
        for job_id, given in results.items():
            batch[job_id] = unique_results(job_id, given, intakes[job_id])
        async with refusing_unstorable(), self.pool.acquire() as conn, conn.transaction():
            jobs = {j["job_id"]: j for j in await conn.fetch(_LOCK, list(batch))}
            # A job we waited for while another guard decided it shows its new status,
            # but the verdict joined to it comes from the snapshot taken before the
            # wait: read those again, now that their verdicts are committed.
            stale = [i for i, j in jobs.items() if j["status"] in TERMINAL and j["payload"] is None]
            if stale:
                jobs.update({j["job_id"]: j for j in await conn.fetch(_LOCK, stale)})
            for job_id in batch.keys() - jobs.keys():
                intakes[job_id].ignored.append(f"job {job_id} is unknown")
            taken = [r for job_id in jobs for r in batch[job_id]]
            open_ids = [i for i, j in jobs.items() if j["status"] not in TERMINAL]
            rows = await conn.fetch(
                _TAKE,
                [r.job_id for r in taken],
                [r.result_id for r in taken],
                [r.assignment_id for r in taken],
                [r.node_id for r in taken],
                [r.precision_label() for r in taken],
                # As JSON text: asyncpg would read nested lists as array dimensions.
                [None if r.error else json_text(r.output()) for r in taken],
                [r.error for r in taken],
                [r.elapsed_ms for r in taken],
                open_ids,
                [r.hw_class for r in taken],
            )
            by_job: dict[UUID, list[Any]] = defaultdict(list)
            for row in rows:
                by_job[row["job_id"]].append(row)
            late: list[tuple[Any, tuple[str, Any, str]]] = []
            plain: list[tuple[UUID, Conclude]] = []
            for job_id, job in jobs.items():
                intake, mine = intakes[job_id], batch[job_id]
                intake.submitted_at = job["created_at"]
                counted = _tally(by_job[job_id], intake, {r.assignment_id: r.node_id for r in mine})
                fresh = [_in_hand(r) for r in mine if r.assignment_id in counted]
                if job["status"] in TERMINAL:
                    if fresh and job["c_result_id"] is not None:
                        canonical = _replica(job, prefix="c_")
                        events = score_late(job["task"], canonical, fresh)
                        late.extend((job_id, e) for e in events)
                    intake.verdict = verdict_of(
                        {"payload": job["payload"], "output": job["c_output"]}
                    )
                    continue
                if not fresh:
                    continue
                others = [r for r in by_job[job_id] if not r["incoming"]]
                outcome = adjudicate(_case(job, others, fresh))
                if _plain(job, outcome):
                    assert isinstance(outcome, Conclude)
                    plain.append((job_id, outcome))
                else:
                    await self._apply(conn, job, outcome, intake)
            await self.write_verdicts(
                conn,
                [Decision(o.verdict, o.events, o.unchecked) for _, o in plain],
                more_events=late,
            )
            for job_id, outcome in plain:
                intakes[job_id].verdict, intakes[job_id].new_verdict = outcome.verdict, True
        return intakes

    async def _apply(self, conn: Connection, job: Any, outcome: Outcome, intake: Intake) -> None:
        """Record what the core decided for a job whose replicas changed."""
        if isinstance(outcome, Wait):
            if outcome.due:
                await self.notify_due(conn, [job["job_id"]])
            return
        if isinstance(outcome, Escalate):
            await conn.execute(
                "UPDATE jobs SET redundancy = $2 WHERE job_id = $1",
                job["job_id"],
                outcome.redundancy,
            )
            await self.notify_due(conn, [job["job_id"]])
            intake.escalated = outcome.redundancy
            return
        intake.parent, intake.reopened = await self._conclude(conn, job, outcome)
        if outcome.publish:
            intake.verdict, intake.new_verdict = outcome.verdict, True

    async def _conclude(
        self, conn: Connection, job: Any, outcome: Conclude
    ) -> tuple[Verdict | None, int]:
        """Record a decision (or the revision of one, or the first verdict kept), reopen
        the unchecked results of any node it caught, and stitch the split job it may
        complete. Returns that split job's verdict and how many results were reopened."""
        verdict = outcome.verdict
        if outcome.keep_first:
            await conn.execute(
                "UPDATE jobs SET status = $2, reason = $3, unchecked = true WHERE job_id = $1",
                job["job_id"],
                verdict.status,
                verdict.reason,
            )
            await self.add_events(conn, job["job_id"], outcome.events)
            return None, 0
        if outcome.revision:
            await self.revise_verdict(conn, verdict, events=outcome.events)
        else:
            await self.write_verdict(
                conn, verdict, events=outcome.events, unchecked=outcome.unchecked
            )
            if not outcome.publish:
                await self.mark_published([verdict.job_id], conn)
        reopened: list[Any] = []
        if outcome.reopen is not None:
            reopened = await conn.fetch(
                _REOPEN,
                list(outcome.reopen.nodes),
                job["model"],
                outcome.reopen.limit,
                self.revalidate_deadline_s,
                outcome.reopen.redundancy,
            )
            await self.notify_due(conn, [r["job_id"] for r in reopened])
        parent = None
        if job["parent_id"] is not None:
            parent = await self.complete_parent(conn, job["parent_id"], revise=outcome.revision)
        return parent, len(reopened)

    async def purge_content(self, retention_s: float, limit: int = 500) -> int:
        """Remove the content of jobs decided more than `retention_s` ago, keeping its
        sha256 (cortensor.adapters.ledger.retention); returns how many were purged."""
        return await purge_content(self, retention_s, limit)

    async def expire_stragglers(self, limit: int = 500, *, horizon: datetime | None = None) -> int:
        """Charge nodes that never answered a job decided without them.

        A job is verified as soon as a strict majority agrees; a replica still out
        when its own deadline passes is timed out and charged like any other, unless an
        outage excuses it (cortensor.protocol.outages.excused): then it is `excused`.
        Only deadlines before `horizon`, when given, are judged
        (cortensor.protocol.outages.judging_horizon).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            late = await conn.fetch(
                f"""
                SELECT a.assignment_id, {excused_sql("$2")} AS excused
                FROM assignments a JOIN jobs j USING (job_id)
                WHERE a.status = 'assigned' AND a.deadline_at < LEAST(now(), $3::timestamptz)
                  AND j.status NOT IN ('waiting', 'running')
                ORDER BY a.deadline_at LIMIT $1
                FOR UPDATE OF a SKIP LOCKED
                """,
                limit,
                self.outage_grace_s,
                horizon,
            )
            await self.excuse(conn, [r["assignment_id"] for r in late if r["excused"]])
            charged = [r["assignment_id"] for r in late if not r["excused"]]
            return await self.time_out(conn, charged) if charged else 0

    async def decide_expired(
        self, limit: int = 50, *, horizon: datetime | None = None
    ) -> list[Verdict]:
        """Decide every running job past its deadline with the results it has (see
        `at_deadline`); returns the verdicts to publish.

        Replicas still missing are timed out and charged to their nodes, unless an
        outage excuses them (cortensor.protocol.outages.excused): those are `excused`,
        charged to nobody. Jobs whose deadline fell inside an outage have had it pushed
        back first (`extend_deadlines`, called by the guard's sweep). Only jobs whose
        deadline is before `horizon`, when given, are decided
        (cortensor.protocol.outages.judging_horizon).
        """
        verdicts = []
        async with self.pool.acquire() as conn, conn.transaction():
            jobs = await conn.fetch(
                """
                SELECT j.job_id, j.task, j.model, j.redundancy, j.parent_id, j.part, j.auto,
                       j.probe, j.params, j.owner, v.payload, v.revision
                FROM jobs j LEFT JOIN verdicts v USING (job_id)
                WHERE j.status = 'running' AND j.deadline_at < LEAST(now(), $2::timestamptz)
                ORDER BY j.deadline_at LIMIT $1 FOR UPDATE OF j SKIP LOCKED
                """,
                limit,
                horizon,
            )
            parents = set()
            for job in jobs:
                await conn.execute(
                    f"""
                    UPDATE assignments a
                    SET status = CASE WHEN {excused_sql("$2")} THEN 'excused' ELSE 'timed_out'
                                 END,
                        finished_at = now()
                    WHERE a.job_id = $1 AND a.status = 'assigned'
                    """,
                    job["job_id"],
                    self.outage_grace_s,
                )
                rows = await conn.fetch(_REPLICAS, job["job_id"])
                outcome = at_deadline(_case(job, rows, expired=True))
                parent, _ = await self._conclude(conn, job, outcome)
                if outcome.publish and not outcome.keep_first:
                    verdicts.append(outcome.verdict)
                if parent is not None:
                    parents.add(parent.job_id)
                    verdicts.append(parent)
            for parent_id in {j["parent_id"] for j in jobs} - {None, *parents}:
                parent = await self.complete_parent(conn, parent_id)
                if parent is not None:
                    verdicts.append(parent)
        return verdicts
