"""Retention of user content (cortensor.adapters.ledger.retention), on PostgreSQL with the
guard's role: a job decided longer ago than the retention period loses its inputs and
outputs and keeps their sha256, its statuses and its reputation events; a fresh one
keeps everything; the probe pool never offers a purged job; the reports still run.

Each test gets a freshly migrated database, so that a purge sees only its own jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from cortensor.adapters.ledger import probes as probe_ledger
from cortensor.adapters.ledger.retention import OUTPUT_KEYS
from cortensor.settings import Settings
from tests.conftest import role_dsn
from tests.integration.conftest import Ledgers
from tests.integration.test_ledger_store import MODEL, embeddings, open_running, result_for

pytestmark = pytest.mark.postgres

DAY_S = 24 * 3600.0


@pytest.fixture
async def admin(own_database: Settings) -> AsyncIterator[asyncpg.Connection]:
    """The operator's connection, to set the clock back on a decision and to look."""
    conn = await asyncpg.connect(own_database.asyncpg_dsn)
    yield conn
    await conn.close()


async def verified_job(ledgers: Ledgers) -> uuid.UUID:
    """A job two of its three nodes agreed on."""
    running = await open_running(ledgers.router, redundancy=3)
    truth = embeddings()
    for node in running.nodes[:2]:
        await ledgers.guard.take_results(running.job.job_id, [result_for(running.of(node), truth)])
    return running.job.job_id


async def snapshot(conn: asyncpg.Connection, job_id: uuid.UUID) -> dict[str, Any]:
    """What retention must keep, and the sha256 of what it must remove."""
    job = await conn.fetchrow(
        """
        SELECT status, reason, task, model, created_at, decided_at, deadline_at,
               sha256(convert_to(inputs::text, 'UTF8')) AS inputs_sha256
        FROM jobs WHERE job_id = $1
        """,
        job_id,
    )
    results = await conn.fetch(
        """
        SELECT result_id, node_id, precision, elapsed_ms, received_at,
               sha256(convert_to(output::text, 'UTF8')) AS output_sha256
        FROM results WHERE job_id = $1 ORDER BY result_id
        """,
        job_id,
    )
    events = await conn.fetch(
        "SELECT * FROM reputation_events WHERE job_id = $1 ORDER BY event_id", job_id
    )
    verdict = await conn.fetchrow(
        "SELECT status, reason, canonical_result_id, replicas, revision FROM verdicts"
        " WHERE job_id = $1",
        job_id,
    )
    return {
        "job": dict(job),
        "results": [dict(r) for r in results],
        "events": [dict(e) for e in events],
        "verdict": dict(verdict),
    }


async def age(conn: asyncpg.Connection, job_id: uuid.UUID, hours: float) -> None:
    await conn.execute(
        "UPDATE jobs SET decided_at = now() - make_interval(hours => $2) WHERE job_id = $1",
        job_id,
        hours,
    )


async def test_an_old_decision_keeps_hashes_statuses_and_events_and_loses_its_content(
    own: Ledgers, admin: asyncpg.Connection
) -> None:
    old, fresh = await verified_job(own), await verified_job(own)
    await age(admin, old, 25)
    await age(admin, fresh, 23)
    before = {job: await snapshot(admin, job) for job in (old, fresh)}

    assert await own.guard.purge_content(DAY_S) == 1

    after = {job: await snapshot(admin, job) for job in (old, fresh)}
    # What is kept: statuses, timings, the events, the verdict's facts.
    for job in (old, fresh):
        for key in ("events", "verdict"):
            assert after[job][key] == before[job][key]
        kept = {k: v for k, v in after[job]["job"].items() if k != "inputs_sha256"}
        assert kept == {k: v for k, v in before[job]["job"].items() if k != "inputs_sha256"}
    # The old job's content is gone, its sha256 kept; the fresh one's is untouched.
    row = await admin.fetchrow(
        "SELECT inputs, audio, inputs_sha256, purged_at FROM jobs WHERE job_id = $1", old
    )
    assert row["inputs"] is None
    assert row["audio"] is None
    assert row["purged_at"] is not None
    assert row["inputs_sha256"] == before[old]["job"]["inputs_sha256"]
    outputs = await admin.fetch(
        "SELECT output, output_sha256 FROM results WHERE job_id = $1 ORDER BY result_id", old
    )
    assert [r["output"] for r in outputs] == [None, None]
    assert [r["output_sha256"] for r in outputs] == [
        r["output_sha256"] for r in before[old]["results"]
    ]
    payload = await admin.fetchval("SELECT payload::text FROM verdicts WHERE job_id = $1", old)
    assert not any(f'"{key}"' in payload for key in OUTPUT_KEYS)
    verdict = await own.guard.stored_verdict(old)
    assert verdict is not None
    assert verdict.status == "verified"
    assert verdict.output() is None
    kept = await admin.fetchrow(
        "SELECT inputs, purged_at, inputs_sha256 FROM jobs WHERE job_id = $1", fresh
    )
    assert kept["inputs"]
    assert kept["purged_at"] is None
    assert kept["inputs_sha256"] is None
    assert await admin.fetchval(
        "SELECT count(*) FROM results WHERE job_id = $1 AND output IS NOT NULL", fresh
    ) == len(before[fresh]["results"])

    # Idempotent: nothing more is due.
    assert await own.guard.purge_content(DAY_S) == 0


async def test_the_probe_pool_never_offers_a_purged_job(
    own: Ledgers, admin: asyncpg.Connection
) -> None:
    old, fresh = await verified_job(own), await verified_job(own)
    await age(admin, old, 48)

    assert await own.guard.purge_content(DAY_S) == 1

    pool = await probe_ledger.verified_jobs(own.router, {MODEL}, per_model=10)
    assert [p.key for p in pool] == [str(fresh)]


async def test_open_and_undecided_jobs_are_never_purged(
    own: Ledgers, admin: asyncpg.Connection
) -> None:
    running = await open_running(own.router, redundancy=3)
    # Even with a decision time far back (a reopened check keeps its first one), a job
    # that is running again keeps its content.
    await admin.execute(
        "UPDATE jobs SET decided_at = now() - interval '30 days' WHERE job_id = $1",
        running.job.job_id,
    )

    assert await own.guard.purge_content(DAY_S) == 0
    assert await admin.fetchval(
        "SELECT inputs IS NOT NULL FROM jobs WHERE job_id = $1", running.job.job_id
    )


async def test_the_reports_still_run_after_a_purge(
    own: Ledgers, own_database: Settings, admin: asyncpg.Connection
) -> None:
    old = await verified_job(own)
    await age(admin, old, 25)
    assert await own.guard.purge_content(DAY_S) == 1

    views = await admin.fetch(
        "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'"
    )
    reports = await asyncpg.connect(role_dsn(own_database, "reports"))
    try:
        for view in views:
            await reports.fetch(f'SELECT * FROM "{view["table_name"]}"')
        leaderboard = await reports.fetch("SELECT node_id, agreed FROM node_leaderboard")
    finally:
        await reports.close()
    assert sum(r["agreed"] for r in leaderboard) == 2
