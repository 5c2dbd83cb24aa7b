"""The guard's purge loop (Guard.purge) on the in-memory ledger and a ManualClock: it
removes content once the retention period has passed since the decision, and not
before, a batch at a time until nothing is due."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

from cortensor.adapters import memory
from cortensor.adapters.memory import ManualClock, MemoryKeys, MemoryLedger, MemoryNats
from cortensor.adapters.topology import Topology
from cortensor.protocol.units import NewJob, assignments_for
from cortensor.services.guard import service
from cortensor.services.guard.service import Guard
from tests.conftest import make_settings
from tests.contract.sides import TwinLedger
from tests.contract.test_ledger_contract import HW, UP, answer, enrol, job, node_ids


async def outputs(ledger: MemoryLedger, jobs: list[UUID]) -> list[Any]:
    """Each job's verified output as its stored verdict carries it."""
    verdicts = [await ledger.stored_verdict(j) for j in jobs]
    assert all(v is not None and v.status == "verified" for v in verdicts)
    return [v.output() for v in verdicts if v is not None]


async def test_content_goes_once_the_retention_period_has_passed_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "PURGE_BATCH", 2)
    clock = ManualClock()
    ledger = MemoryLedger(clock)
    side = TwinLedger(ledger)
    settings = make_settings(retention_h=1.0)
    topology = Topology(settings.namespace)
    guard = Guard(
        settings, memory.guard_ports(ledger, MemoryNats(topology), topology, keys=MemoryKeys())
    )
    [a] = node_ids(1)
    await enrol(side, [a])
    jobs = []
    for _ in range(5):
        spec = replace(job(1), deadline_at=clock() + timedelta(seconds=60))
        made = assignments_for(spec, [(a, HW)], clock() + timedelta(seconds=30))
        await ledger.open_jobs([NewJob(spec, clock(), "running", made)])
        await ledger.take_results(spec.job_id, [answer(made[0], UP)])
        jobs.append(spec.job_id)

    clock.advance(3599)
    await guard.purge()
    assert await outputs(ledger, jobs) == [[UP]] * 5

    clock.advance(2)
    await guard.purge()
    assert await outputs(ledger, jobs) == [None] * 5
    assert await ledger.purge_content(0.0) == 0
