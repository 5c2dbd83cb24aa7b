"""The ledger folds every reputation event into the node's standing as it is inserted;
the audit folds the events again in Python and must find the same standings."""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.ledger.store import Ledger
from cortensor.protocol.reputation import (
    ADMIT_PROBES,
    MAX_OFFENCES,
    PROBATION_LATENESS_LIMIT,
    READMIT_PROBES,
    STEP_LATE,
)
from cortensor.settings import Settings
from cortensor.tools.audit import audit

pytestmark = [pytest.mark.postgres]

MODELS = ("all-MiniLM-L6-v2", "whisper-base")


@pytest.fixture
async def ledger(ledger_settings: Settings) -> AsyncIterator[RouterLedger]:
    ledger = await RouterLedger.connect(ledger_settings.asyncpg_dsn)
    yield ledger
    await ledger.close()


async def _node(ledger: Ledger, node: str) -> None:
    await ledger.pool.execute(
        "INSERT INTO nodes (node_id, hw_class, precision) VALUES ($1, 'cpu-int8', 'int8')"
        " ON CONFLICT DO NOTHING",
        node,
    )


async def _assignment(
    ledger: Ledger, node: str, *, model: str, probe: bool
) -> tuple[uuid.UUID, uuid.UUID]:
    """A job of one assignment on `node`: (job id, assignment id)."""
    job_id, assignment_id = uuid.uuid4(), uuid.uuid4()
    await ledger.pool.execute(
        """
        INSERT INTO jobs (job_id, task, model, redundancy, hw_class, inputs, status, deadline_at,
                          probe)
        VALUES ($1, 'embed', $2, 1, 'any', '[]'::jsonb, 'running', now(), $3)
        """,
        job_id,
        model,
        probe,
    )
    await ledger.pool.execute(
        "INSERT INTO assignments (assignment_id, job_id, node_id, hw_class, deadline_at)"
        " VALUES ($1, $2, $3, 'cpu-int8', now())",
        assignment_id,
        job_id,
        node,
    )
    return job_id, assignment_id


async def _event(
    ledger: Ledger, node: str, kind: str, *, model: str = MODELS[0], probe: bool = False
) -> None:
    job_id, assignment_id = await _assignment(ledger, node, model=model, probe=probe)
    async with ledger.pool.acquire() as conn:
        await ledger.add_events(conn, job_id, [(node, assignment_id, kind)])


async def _standing(ledger: Ledger, node: str, model: str = "") -> dict[str, object]:
    row = await ledger.pool.fetchrow(
        "SELECT * FROM node_standing WHERE node_id = $1 AND model = $2", node, model
    )
    assert row is not None
    return dict(row)


async def test_probes_admit_and_failures_quarantine_in_the_ledger(ledger: RouterLedger) -> None:
    node = f"trusty-{uuid.uuid4().hex[:6]}"
    await _node(ledger, node)
    for _ in range(3):
        await _event(ledger, node, "agreed", probe=True)
    assert (await _standing(ledger, node))["trust"] == "active"
    for _ in range(3):
        await _event(ledger, node, "disagreed")
    standing = await _standing(ledger, node)
    assert (standing["trust"], standing["streak"], standing["observations"]) == (
        "quarantined",
        0,
        6,
    )
    assert (await _standing(ledger, node, MODELS[0]))["observations"] == 6
    stats = await ledger.node_stats()
    assert (stats[node].trust, stats[node].streaks) == ("quarantined", {MODELS[0]: 0})


async def test_misses_and_offences_fold_in_the_ledger_as_in_python(
    ledger: RouterLedger, ledger_settings: Settings
) -> None:
    slow, cheat = f"slow-{uuid.uuid4().hex[:6]}", f"cheat-{uuid.uuid4().hex[:6]}"
    for node in (slow, cheat):
        await _node(ledger, node)
    # Missed probes on probation: quarantined after 5, as a late node, not an offender.
    for _ in range(math.ceil(PROBATION_LATENESS_LIMIT / STEP_LATE)):
        await _event(ledger, slow, "timed_out", probe=True)
    standing = await _standing(ledger, slow)
    assert (standing["trust"], standing["offences"]) == ("quarantined", 0)
    assert standing["lateness"] == pytest.approx(5 * STEP_LATE)
    # Wrong answers twice over: the second quarantine is for good.
    for _ in range(ADMIT_PROBES):
        await _event(ledger, cheat, "agreed", probe=True)
    for _ in range(MAX_OFFENCES):
        for _ in range(3):
            await _event(ledger, cheat, "disagreed")
        for _ in range(READMIT_PROBES):
            await _event(ledger, cheat, "agreed", probe=True)
    standing = await _standing(ledger, cheat)
    assert (standing["trust"], standing["offences"]) == ("quarantined", MAX_OFFENCES)
    stats = await ledger.node_stats()
    assert (stats[cheat].trust, stats[cheat].offences) == ("quarantined", MAX_OFFENCES)
    assert audit(ledger_settings).mismatches == []


async def test_a_second_event_for_one_assignment_is_not_folded(ledger: RouterLedger) -> None:
    node = f"twice-{uuid.uuid4().hex[:6]}"
    await _node(ledger, node)
    job_id, assignment_id = await _assignment(ledger, node, model=MODELS[0], probe=False)
    async with ledger.pool.acquire() as conn:
        await ledger.add_events(conn, job_id, [(node, assignment_id, "agreed")])
        await ledger.add_events(conn, job_id, [(node, assignment_id, "disagreed")])
    standing = await _standing(ledger, node)
    assert (standing["observations"], standing["agreed"], standing["disagreed"]) == (1, 1.0, 0.0)


async def test_concurrent_random_histories_audit_clean(
    ledger: RouterLedger, ledger_settings: Settings
) -> None:
    rng = random.Random(11)
    nodes = [f"busy-{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
    for node in nodes:
        await _node(ledger, node)
    other = await Ledger.connect(ledger_settings.asyncpg_dsn)
    try:

        async def writer(target: Ledger, seed: int) -> None:
            local = random.Random(seed)
            for _ in range(40):
                await _event(
                    target,
                    local.choice(nodes),
                    local.choice(["agreed", "agreed", "agreed", "disagreed", "timed_out"]),
                    model=local.choice(MODELS),
                    probe=local.random() < 0.3,
                )

        await asyncio.gather(writer(ledger, rng.randrange(99)), writer(other, rng.randrange(99)))
    finally:
        await other.close()
    outcome = audit(ledger_settings)
    assert outcome.events >= 80
    assert outcome.mismatches == []


def test_the_check_command_catches_a_tampered_standing(ledger_settings: Settings) -> None:
    async def tamper() -> None:
        ledger = await Ledger.connect(ledger_settings.asyncpg_dsn)
        try:
            node = f"tamper-{uuid.uuid4().hex[:6]}"
            await _node(ledger, node)
            await _event(ledger, node, "agreed")
            await ledger.pool.execute(
                "UPDATE node_standing SET streak = 99 WHERE node_id = $1 AND model = ''", node
            )
        finally:
            await ledger.close()

    env = {**os.environ, "CORTENSOR_DATABASE_URL": ledger_settings.database_url}
    cortensor = str(Path(sys.executable).parent / "cortensor")
    clean = subprocess.run(
        [cortensor, "reputation", "check"], env=env, capture_output=True, text=True, check=False
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "every stored standing follows from the events" in clean.stdout
    asyncio.run(tamper())
    caught = subprocess.run(
        [cortensor, "reputation", "check"], env=env, capture_output=True, text=True, check=False
    )
    assert caught.returncode == 1
    assert "streak: stored 99, events give 1" in caught.stdout
