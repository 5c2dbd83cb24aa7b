"""Retention on both ledgers, real and in memory (GuardBook.purge_content): once a job's
decision is older than the period, its verdict keeps its status and nodes but no output,
the probe pool no longer offers it, and a job still open keeps everything.

A retention of 0 purges every job decided before the purge began, so this module keeps
its own ledger and its tests expect every decided job in it to be purged.
"""

from __future__ import annotations

import pytest

from cortensor.protocol.units import NewJob
from cortensor.schemas import utcnow
from tests.contract.sides import LedgerSide
from tests.contract.test_ledger_contract import (
    ACROSS,
    MODEL,
    UP,
    answer,
    enrol,
    job,
    node_ids,
    running,
)

pytestmark = pytest.mark.postgres


async def test_decided_jobs_lose_their_outputs_and_open_ones_keep_theirs(
    ledger_side: LedgerSide,
) -> None:
    a, b, c = node_ids(3)
    await enrol(ledger_side, [a, b, c])
    whole = running(job(2), [a, b])
    parent = job(1)
    parts = [running(job(1, parent_id=parent.job_id, part=i), [n]) for i, n in enumerate([a, b])]
    still_open = running(job(1), [c])
    await ledger_side.router.open_jobs(
        [whole, NewJob(parent, utcnow(), "split"), *parts, still_open]
    )
    await ledger_side.guard.take_results(
        whole.job.job_id, [answer(x, UP) for x in whole.assignments]
    )
    for part, vector in zip(parts, [UP, ACROSS], strict=True):
        [held] = part.assignments
        await ledger_side.guard.take_results(held.job_id, [answer(held, vector)])
    stitched = await ledger_side.guard.stored_verdict(parent.job_id)
    assert stitched is not None
    assert stitched.output() == [UP, ACROSS]
    assert str(whole.job.job_id) in {
        p.key for p in await ledger_side.router.verified_jobs([MODEL], 100)
    }

    # The whole job, the split job and its two parts.
    assert await ledger_side.guard.purge_content(0.0) == 4

    for decided in (whole.job.job_id, parent.job_id, *(p.job.job_id for p in parts)):
        verdict = await ledger_side.guard.stored_verdict(decided)
        assert verdict is not None
        assert verdict.status == "verified"
        assert verdict.output() is None
    kept = await ledger_side.guard.stored_verdict(parent.job_id)
    assert kept is not None
    assert [p.agreeing for p in kept.parts] == [p.agreeing for p in stitched.parts]
    assert await ledger_side.router.verified_jobs([MODEL], 100) == []
    assert await ledger_side.job(still_open.job.job_id) == ("running", 1, False)
    [outstanding] = await ledger_side.router.outstanding([still_open.job.job_id])
    assert outstanding.inputs == ["hello"]
    assert await ledger_side.guard.purge_content(0.0) == 0
