"""The router's sweeps take the earliest deadlines first, not the oldest created_at: a
job's created_at is its client's to set (the contract allows any RFC 3339 time), and
jobs dated in year 1 must not keep other jobs from the sweep."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from cortensor.adapters.ledger.router import OpenJob
from cortensor.protocol.planning import Plan
from cortensor.schemas import JobRequest, utcnow
from tests.integration.conftest import Ledgers

pytestmark = [pytest.mark.postgres]


def in_s(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


def no_nodes(job: OpenJob, needed: int) -> Plan | str:
    return f"needs {needed} more node(s); 0 available"


async def test_jobs_dated_long_ago_do_not_hold_up_a_job_past_its_deadline(own: Ledgers) -> None:
    ancient = [
        JobRequest(inputs=["waits"], created_at="0001-01-02T00:00:00Z")  # type: ignore[arg-type]
        for _ in range(3)
    ]
    for job in ancient:
        await own.router.open_job(job, in_s(600), [])
    late = JobRequest(inputs=["late"])
    await own.router.open_job(late, in_s(-1), [])

    made, failed = await own.router.route_waiting(no_nodes, limit=2)

    assert made == []
    assert [(v.job_id, v.status) for v in failed] == [(late.job_id, "failed")]
