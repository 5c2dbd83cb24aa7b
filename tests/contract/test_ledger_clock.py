"""The twin ledger reads time only from the clock it is given: deadlines, republishing
and the time of reputation events move with a ManualClock, and with nothing else."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from cortensor.adapters.memory import ManualClock, MemoryLedger
from cortensor.protocol.reputation import HALF_LIFE_S
from cortensor.protocol.units import NewJob, assignments_for
from tests.contract.sides import TwinLedger
from tests.contract.test_ledger_contract import HW, UP, Planner, answer, enrol, job, node_ids


async def test_deadlines_pass_when_the_clock_is_moved_and_not_before() -> None:
    clock = ManualClock()
    side = TwinLedger(MemoryLedger(clock))
    a, b, c = node_ids(3)
    await enrol(side, [a, b, c])
    spec = replace(job(3), deadline_at=clock() + timedelta(seconds=30))
    sent = assignments_for(spec, [(a, HW), (b, HW)], clock() + timedelta(seconds=10))
    await side.router.open_jobs([NewJob(spec, clock(), "running", sent)])
    await side.router.mark_sent([x.assignment_id for x in sent])
    planner = Planner([c], {spec.job_id})

    assert await side.router.reroute_expired(planner) == []
    clock.advance(10.5)
    [replacement] = await side.router.reroute_expired(planner)
    assert replacement.node_id == c
    await side.router.mark_sent([replacement.assignment_id])
    assert sorted(await side.events(spec.job_id)) == [(a, "timed_out"), (b, "timed_out")]
    assert await side.guard.decide_expired() == []
    await side.guard.take_results(spec.job_id, [answer(replacement, UP)])
    clock.advance(20)
    [verdict] = await side.guard.decide_expired()
    assert verdict.job_id == spec.job_id
    assert sorted(verdict.timed_out) == sorted([a, b])


async def test_unpublished_verdicts_wait_out_their_age_on_the_clock() -> None:
    clock = ManualClock()
    side = TwinLedger(MemoryLedger(clock))
    [a] = node_ids(1)
    await enrol(side, [a])
    spec = job(1)
    new = NewJob(spec, clock(), "running", assignments_for(spec, [(a, HW)], clock()))
    await side.router.open_jobs([new])
    intake = await side.guard.take_results(new.job.job_id, [answer(new.assignments[0], UP)])
    assert intake.verdict is not None
    assert await side.guard.unpublished_verdicts(5.0) == []
    clock.advance(5.5)
    assert await side.guard.unpublished_verdicts(5.0) == [intake.verdict]


async def test_events_are_stamped_by_the_clock_and_decay_with_it() -> None:
    clock = ManualClock()
    ledger = MemoryLedger(clock)
    side = TwinLedger(ledger)
    [a] = node_ids(1)
    await enrol(side, [a])
    specs = [job(1), job(1)]
    made = [assignments_for(s, [(a, HW)], clock())[0] for s in specs]
    await side.router.open_jobs(
        [NewJob(s, clock(), "running", [m]) for s, m in zip(specs, made, strict=True)]
    )
    await side.add_events(specs[0].job_id, [(a, made[0].assignment_id, "agreed")])
    clock.advance(HALF_LIFE_S)
    await side.add_events(specs[1].job_id, [(a, made[1].assignment_id, "agreed")])
    standing = ledger.standing(a)
    assert standing is not None
    assert standing.agreed == pytest.approx(1.5)
    assert standing.at == clock().timestamp()


def test_a_clock_moves_only_forward() -> None:
    with pytest.raises(ValueError, match="only moves forward"):
        ManualClock().advance(-1)
