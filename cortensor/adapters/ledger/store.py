"""The ledger on the hot path: asyncpg, one transaction per decision.

The schema is owned by the migrations (db/migrations) and mirrored by
cortensor.adapters.ledger.tables; routers and guards talk to it here with plain SQL over
asyncpg, which measured 1.6-2 ms faster per job than SQLAlchemy's async engine
(../shared/LIMITS.md). Every write is idempotent: unique keys on job_id,
assignment_id and result_id make a redelivered message change nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple, Self, TypeAlias

import asyncpg
import orjson

from cortensor.protocol.outages import EXTENSION_S, GRACE_S, Outage
from cortensor.protocol.parts import DecidedPart, stitch
from cortensor.schemas import OUTPUT_FIELD, TERMINAL_STATUSES, Verdict

Connection: TypeAlias = asyncpg.Connection

DUE_CHANNEL = "cortensor_due"
"""The PostgreSQL NOTIFY channel on which a guard tells routers, when its transaction
commits, that a job needs replicas sent now (the job id is the payload): an `auto` job's
checks once its leader has answered, a split vote's extra replicas, the checks of a
reopened result. Routers' sweeps find the same jobs; the notice only saves the wait."""


_VERDICT = """
SELECT v.payload, r.output FROM verdicts v
LEFT JOIN results r ON r.result_id = v.canonical_result_id
"""
"""A stored verdict: its payload plus the canonical result's output."""

_DECIDED = frozenset(TERMINAL_STATUSES) - {"rejected"}

_PARTS = """
SELECT j.job_id, j.part, j.status, j.params, v.payload, r.output
FROM jobs j
LEFT JOIN verdicts v USING (job_id)
LEFT JOIN results r ON r.result_id = v.canonical_result_id
WHERE j.parent_id = $1
ORDER BY j.part
"""
"""Every part of a split job, with its verdict and canonical output once decided."""


def excused_sql(grace: str) -> str:
    """SQL that is true for an assignment `a` whose missed deadline is excused
    (cortensor.protocol.outages.excused); `grace` is the placeholder of the grace in
    seconds."""
    return f"""(a.sent_at IS NULL OR EXISTS (
        SELECT 1 FROM outages o
        WHERE o.started_at <= a.deadline_at
          AND a.sent_at <= o.ended_at + make_interval(secs => {grace}::float8)))"""


class Decision(NamedTuple):
    """A verdict to write, with the reputation events it implies (node_id,
    assignment_id, kind) and whether it rests on one replica nobody checked (re-validated
    if its node later fails a check)."""

    verdict: Verdict
    events: Sequence[tuple[str, Any, str]] = ()
    unchecked: bool = False


def _payload(verdict: Verdict) -> str:
    """A verdict as stored: a verified output lives once, in the canonical result (see
    _VERDICT); a split job's stitched output has no such result and stays here."""
    exclude = {OUTPUT_FIELD[verdict.task]} if verdict.canonical_result_id else set()
    return verdict.model_dump_json(exclude=exclude)


def verdict_of(row: Any) -> Verdict:
    """A Verdict from a stored payload and the canonical output (see _VERDICT)."""
    verdict = Verdict.model_validate(row["payload"])
    return verdict if row["output"] is None else verdict.with_output(row["output"])


def json_text(value: Any) -> str:
    """`value` as JSON text for a jsonb parameter, the same as the standard library
    would give where PostgreSQL can tell. orjson writes a non-finite number as null, which
    would store a NaN as a hole, and refuses a lone surrogate: whatever orjson gives a
    null or refuses, the standard library encodes again, so that such a value reaches
    PostgreSQL as it is and is refused there
    (cortensor.adapters.ledger.guard.refusing_unstorable)."""
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value)
    return json.dumps(value) if b"null" in text else text.decode()


async def _init_connection(conn: Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json_text, decoder=orjson.loads, schema="pg_catalog")


class Ledger:
    """A pool of connections to the ledger, and the writes routers and guards share."""

    outage_grace_s = GRACE_S
    """How long after an outage a missed deadline is still excused (protocol.outages)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, max_size: int = 4) -> Self:
        """Open a small pool; the schema must have been migrated (`cortensor db upgrade`)."""
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, init=_init_connection)
        return cls(pool)

    async def close(self) -> None:
        """Close every connection."""
        await self.pool.close()

    @staticmethod
    async def write_verdict(
        conn: Connection,
        verdict: Verdict,
        *,
        events: Sequence[tuple[str, Any, str]] = (),
        unchecked: bool = False,
    ) -> bool:
        """Close a job with its verdict and the reputation events it implies (see
        `write_verdicts`). Returns False when the job had a verdict already (a
        redelivery), in which case nothing is written."""
        written = await Ledger.write_verdicts(conn, [Decision(verdict, events, unchecked)])
        return verdict.job_id in written

    @staticmethod
    async def write_verdicts(
        conn: Connection,
        decisions: Sequence[Decision],
        *,
        more_events: Sequence[tuple[Any, tuple[str, Any, str]]] = (),
    ) -> set[Any]:
        """Close jobs with their verdicts and the reputation events they imply, in one
        statement (PostgreSQL runs every data-modifying CTE to completion whether or not
        it is read); returns the ids of the jobs closed. A job that had a verdict
        already (a redelivery) is left as it is, its events too. Job ids must be distinct.

        `more_events` (job_id, (node_id, assignment_id, kind)) are appended whatever
        happens to the verdicts (those of jobs decided before): one statement appends
        every event, in node order, so that the nodes' standings are locked in one order.
        """
        if not decisions and not more_events:
            return set()
        events = [(d.verdict.job_id, True, *e) for d in decisions for e in d.events]
        events += [(job_id, False, *e) for job_id, e in more_events]
        rows = await conn.fetch(
            """
            WITH decided AS (
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[],
                                     $5::int[], $6::text[], $7::bool[])
                     AS d(job_id, status, reason, canonical_result_id, replicas, payload,
                          unchecked)
            ), verdict AS (
                INSERT INTO verdicts (job_id, status, reason, canonical_result_id, replicas,
                                      payload)
                SELECT job_id, status, reason, canonical_result_id, replicas, payload::jsonb
                FROM decided
                ON CONFLICT (job_id) DO NOTHING RETURNING job_id
            ), job AS (
                UPDATE jobs j SET status = d.status, reason = d.reason, decided_at = now(),
                                  unchecked = d.unchecked
                FROM decided d
                WHERE j.job_id = d.job_id AND j.job_id IN (SELECT job_id FROM verdict)
                RETURNING j.job_id
            ), events AS (
                INSERT INTO reputation_events (node_id, job_id, assignment_id, kind)
                SELECT e.node_id, e.job_id, e.assignment_id, e.kind
                FROM unnest($8::uuid[], $9::bool[], $10::text[], $11::uuid[], $12::text[])
                     AS e(job_id, with_verdict, node_id, assignment_id, kind)
                WHERE NOT e.with_verdict OR e.job_id IN (SELECT job_id FROM verdict)
                ORDER BY e.node_id
                ON CONFLICT (assignment_id) DO NOTHING RETURNING 1
            )
            SELECT job_id FROM verdict
            """,
            [d.verdict.job_id for d in decisions],
            [d.verdict.status for d in decisions],
            [d.verdict.reason for d in decisions],
            [d.verdict.canonical_result_id for d in decisions],
            [d.verdict.replicas for d in decisions],
            [_payload(d.verdict) for d in decisions],
            [d.unchecked for d in decisions],
            [e[0] for e in events],
            [e[1] for e in events],
            [e[2] for e in events],
            [e[3] for e in events],
            [e[4] for e in events],
        )
        return {r["job_id"] for r in rows}

    @staticmethod
    async def revise_verdict(
        conn: Connection, verdict: Verdict, *, events: Sequence[tuple[str, Any, str]] = ()
    ) -> None:
        """Replace a job's verdict with a new revision (a re-validation's outcome), with
        the events it implies; the revision goes out as a message of its own."""
        await conn.execute(
            """
            WITH verdict AS (
                UPDATE verdicts SET status = $2, reason = $3, canonical_result_id = $4,
                                    replicas = $5, payload = $6::text::jsonb, revision = $7,
                                    published_at = NULL
                WHERE job_id = $1 RETURNING job_id
            )
            UPDATE jobs SET status = $2, reason = $3, decided_at = now(), unchecked = false
            WHERE job_id IN (SELECT job_id FROM verdict)
            """,
            verdict.job_id,
            verdict.status,
            verdict.reason,
            verdict.canonical_result_id,
            verdict.replicas,
            _payload(verdict),
            verdict.revision,
        )
        await Ledger.add_events(conn, verdict.job_id, events)

    async def complete_parent(
        self, conn: Connection, parent_id: Any, *, revise: bool = False
    ) -> Verdict | None:
        """Stitch a split job's verdict once its last part is decided, in the transaction
        that decided a part; None while some part is still open. With `revise` (a part
        was re-validated), stitch a decided job again as its verdict's next revision.

        The parent's row lock serializes the guards deciding its parts at the same time:
        whoever takes it second sees the first one's part committed.
        """
        status = await conn.fetchval(
            "SELECT status FROM jobs WHERE job_id = $1 FOR UPDATE", parent_id
        )
        if status != "split" and not (revise and status in _DECIDED):
            return None
        rows = await conn.fetch(_PARTS, parent_id)
        if not rows or any(r["payload"] is None for r in rows):
            return None
        parent = await conn.fetchrow(
            "SELECT task, model, owner FROM jobs WHERE job_id = $1", parent_id
        )
        verdict = stitch(
            parent_id,
            parent["task"],
            parent["model"],
            [
                DecidedPart(
                    part=r["part"],
                    job_id=r["job_id"],
                    params=r["params"],
                    verdict=Verdict.model_validate(r["payload"]),
                    output=r["output"],
                )
                for r in rows
            ],
            owner=parent["owner"],
        )
        if status == "split":
            await self.write_verdict(conn, verdict)
            return verdict
        revision = await conn.fetchval("SELECT revision FROM verdicts WHERE job_id = $1", parent_id)
        verdict = verdict.model_copy(update={"revision": (revision or 0) + 1})
        await self.revise_verdict(conn, verdict)
        return verdict

    @staticmethod
    async def add_events(
        conn: Connection, job_id: Any, events: Sequence[tuple[str, Any, str]]
    ) -> None:
        """Append a job's reputation events (node_id, assignment_id, kind); one per
        assignment."""
        await Ledger.add_job_events(conn, [(job_id, e) for e in events])

    @staticmethod
    async def add_job_events(
        conn: Connection, events: Sequence[tuple[Any, tuple[str, Any, str]]]
    ) -> None:
        """Append reputation events of several jobs, (job_id, (node_id, assignment_id,
        kind)), in one statement; one per assignment."""
        if events:
            await conn.execute(
                """
                INSERT INTO reputation_events (node_id, job_id, assignment_id, kind)
                SELECT e.node_id, e.job_id, e.assignment_id, e.kind
                FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[])
                     AS e(job_id, node_id, assignment_id, kind)
                ORDER BY e.node_id
                ON CONFLICT (assignment_id) DO NOTHING
                """,
                [job_id for job_id, _ in events],
                [e[0] for _, e in events],
                [e[1] for _, e in events],
                [e[2] for _, e in events],
            )

    @staticmethod
    async def notify_due(conn: Connection, job_ids: Sequence[Any]) -> None:
        """Tell listening routers, at commit, that these jobs need replicas sent now."""
        if job_ids:
            await conn.execute(
                "SELECT pg_notify($1, j::text) FROM unnest($2::uuid[]) AS j",
                DUE_CHANNEL,
                list(job_ids),
            )

    async def record_outages(self, seen_by: str, outages: Sequence[Outage]) -> None:
        """Record (or close) the windows in which `seen_by` could not reach a server."""
        if not outages:
            return
        await self.pool.execute(
            """
            INSERT INTO outages AS o (server, seen_by, started_at, ended_at, ongoing)
            SELECT w.server, $1, w.started_at, w.ended_at, w.ongoing
            FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[], $5::bool[])
                 AS w(server, started_at, ended_at, ongoing)
            ON CONFLICT (server, seen_by, started_at) DO UPDATE
                SET ended_at = greatest(o.ended_at, excluded.ended_at), ongoing = excluded.ongoing
                WHERE o.ongoing
            """,
            seen_by,
            [o.server for o in outages],
            [o.started_at for o in outages],
            [o.ended_at for o in outages],
            [o.ongoing for o in outages],
        )

    async def outages_since(self, since_s: float) -> list[Outage]:
        """The recorded windows that ended less than `since_s` seconds ago, or are open."""
        rows = await self.pool.fetch(
            """
            SELECT server, started_at, ended_at, ongoing FROM outages
            WHERE ended_at > now() - make_interval(secs => $1::float8) OR ongoing
            ORDER BY started_at
            """,
            since_s,
        )
        return [Outage(r["server"], r["started_at"], r["ended_at"], r["ongoing"]) for r in rows]

    async def extend_deadlines(self, limit: int = 500) -> int:
        """Push back, once, the deadline of open jobs whose deadline fell inside an
        outage (cortensor.protocol.outages.extended); returns how many."""
        extended: int = await self.pool.fetchval(
            """
            WITH due AS (
                SELECT j.job_id FROM jobs j
                WHERE j.status IN ('waiting', 'running') AND NOT j.extended
                  AND j.deadline_at < now() + make_interval(secs => $1::float8)
                  AND EXISTS (
                      SELECT 1 FROM outages o
                      WHERE o.started_at <= j.deadline_at
                        AND j.deadline_at <= o.ended_at + make_interval(secs => $1::float8))
                ORDER BY j.deadline_at LIMIT $3
                FOR UPDATE OF j SKIP LOCKED
            ), pushed AS (
                UPDATE jobs SET deadline_at = deadline_at + make_interval(secs => $2::float8),
                                extended = true
                WHERE job_id IN (SELECT job_id FROM due) RETURNING 1
            )
            SELECT count(*) FROM pushed
            """,
            self.outage_grace_s,
            EXTENSION_S,
            limit,
        )
        return extended

    @staticmethod
    async def excuse(conn: Connection, assignment_ids: Sequence[Any]) -> int:
        """Mark assignments still awaited as excused: missed for an outage or never
        sent, charged to nobody; returns how many."""
        rows = await conn.fetch(
            """
            UPDATE assignments SET status = 'excused', finished_at = now()
            WHERE assignment_id = ANY($1::uuid[]) AND status = 'assigned'
            RETURNING 1
            """,
            list(assignment_ids),
        )
        return len(rows)

    @staticmethod
    async def time_out(conn: Connection, assignment_ids: Sequence[Any]) -> int:
        """Mark assignments still awaited as timed out and charge each node a `timed_out`
        event (one statement); returns how many were timed out."""
        charged: int = await conn.fetchval(
            """
            WITH late AS (
                UPDATE assignments SET status = 'timed_out', finished_at = now()
                WHERE assignment_id = ANY($1::uuid[]) AND status = 'assigned'
                RETURNING assignment_id, node_id, job_id
            ), events AS (
                INSERT INTO reputation_events (node_id, job_id, assignment_id, kind)
                SELECT node_id, job_id, assignment_id, 'timed_out' FROM late ORDER BY node_id
                ON CONFLICT (assignment_id) DO NOTHING RETURNING 1
            )
            SELECT count(*) FROM late
            """,
            list(assignment_ids),
        )
        return charged

    async def stored_verdict(self, job_id: Any) -> Verdict | None:
        """The verdict already written for a job, if any."""
        row = await self.pool.fetchrow(f"{_VERDICT} WHERE v.job_id = $1", job_id)
        return None if row is None else verdict_of(row)

    async def mark_published(self, job_ids: Sequence[Any], conn: Connection | None = None) -> None:
        """Record that these verdicts reached the verdicts stream."""
        if job_ids:
            await (conn or self.pool).execute(
                "UPDATE verdicts SET published_at = now() WHERE job_id = ANY($1::uuid[])",
                list(job_ids),
            )

    async def undecided(self, job_ids: Sequence[Any]) -> set[Any]:
        """Those of these jobs that are recorded and have no verdict yet."""
        rows = await self.pool.fetch(
            "SELECT job_id FROM jobs WHERE job_id = ANY($1::uuid[])"
            " AND status IN ('waiting', 'running', 'split')",
            list(job_ids),
        )
        return {r["job_id"] for r in rows}

    async def unpublished_verdicts(self, older_than_s: float, limit: int = 100) -> list[Verdict]:
        """Verdicts committed but not known to be published (their publisher died)."""
        rows = await self.pool.fetch(
            f"""
            {_VERDICT}
            WHERE v.published_at IS NULL AND v.created_at < now() - make_interval(secs => $1)
            ORDER BY v.created_at LIMIT $2
            """,
            older_than_s,
            limit,
        )
        return [verdict_of(r) for r in rows]
