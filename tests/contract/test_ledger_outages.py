"""Outages are not faults of the nodes, on PostgreSQL and on the twin alike: what an
outage or an unconfirmed send excuses, and what it does not (cortensor.protocol.outages).

The outages table is the ledger's, not a test's: each test here starts with none
recorded, and this module has a database of its own.
"""

from __future__ import annotations

from datetime import timedelta

from cortensor.protocol.outages import Outage
from cortensor.protocol.units import NewJob, assignments_for
from cortensor.schemas import utcnow
from tests.contract.sides import LedgerSide, PostgresLedger, TwinLedger
from tests.contract.test_ledger_contract import HW, UP, Planner, answer, enrol, job, node_ids


async def no_outages(side: LedgerSide) -> None:
    if isinstance(side, PostgresLedger):
        await side.db.execute("DELETE FROM outages")
    elif isinstance(side, TwinLedger):
        side.ledger.tables.outages.clear()


def just_now(server: str = "nats", *, ago_s: float = 5.0, for_s: float = 3.0) -> Outage:
    start = utcnow() - timedelta(seconds=ago_s)
    return Outage(server, start, start + timedelta(seconds=for_s))


async def test_an_outage_is_recorded_once_and_closed_when_it_ends(ledger_side: LedgerSide) -> None:
    await no_outages(ledger_side)
    start = utcnow() - timedelta(seconds=4)
    seen = Outage("rabbitmq", start, start + timedelta(seconds=1), ongoing=True)
    await ledger_side.router.record_outages("router@h:1", [seen])
    await ledger_side.router.record_outages("router@h:1", [seen])
    ended = Outage("rabbitmq", start, start + timedelta(seconds=3))
    await ledger_side.router.record_outages("router@h:1", [ended])
    later = Outage("rabbitmq", start, start + timedelta(seconds=1), ongoing=True)
    await ledger_side.router.record_outages("router@h:1", [later])  # closed stays closed
    assert await ledger_side.guard.outages_since(60) == [ended]


async def test_a_late_assignment_an_outage_overlapped_keeps_its_node_and_is_charged_nothing(
    ledger_side: LedgerSide,
) -> None:
    await no_outages(ledger_side)
    a, b, c = node_ids(3)
    await enrol(ledger_side, [a, b, c])
    spec = job(2)
    late = assignments_for(spec, [(a, HW)], utcnow() - timedelta(seconds=1))
    on_time = assignments_for(spec, [(b, HW)], utcnow() + timedelta(seconds=60))
    await ledger_side.router.open_jobs([NewJob(spec, utcnow(), "running", [*late, *on_time])])
    await ledger_side.router.mark_sent([x.assignment_id for x in [*late, *on_time]])
    await ledger_side.router.record_outages("router@h:1", [just_now()])
    planner = Planner([a, b, c], {spec.job_id})

    made = [x for x in await ledger_side.router.reroute_expired(planner) if x.job_id == spec.job_id]
    assert [(x.assignment_id, x.node_id) for x in made] == [(late[0].assignment_id, a)]
    assert made[0].deadline_at > utcnow()
    assert made[0].deadline_at <= spec.deadline_at
    assert planner.asked == []  # no replacement: the node keeps its replica
    assert await ledger_side.events(spec.job_id) == []

    # The result it sends once the outage is over counts, and so does the node.
    intake = await ledger_side.guard.take_results(spec.job_id, [answer(made[0], UP)])
    assert intake.stored == 1
    intake = await ledger_side.guard.take_results(spec.job_id, [answer(on_time[0], UP)])
    assert intake.verdict is not None
    assert intake.verdict.status == "verified"
    assert sorted(await ledger_side.events(spec.job_id)) == sorted([(a, "agreed"), (b, "agreed")])


async def test_an_assignment_never_confirmed_sent_is_sent_again_rather_than_charged(
    ledger_side: LedgerSide,
) -> None:
    """The router stopped (or lost its broker) between its commit and its publish."""
    await no_outages(ledger_side)
    a, b = node_ids(2)
    await enrol(ledger_side, [a, b])
    spec = job(1)
    unsent = assignments_for(spec, [(a, HW)], utcnow() - timedelta(seconds=1))
    await ledger_side.router.open_jobs([NewJob(spec, utcnow(), "running", unsent)])
    planner = Planner([a, b], {spec.job_id})

    made = [x for x in await ledger_side.router.reroute_expired(planner) if x.job_id == spec.job_id]
    assert [x.node_id for x in made] == [a]
    assert await ledger_side.events(spec.job_id) == []
    # Sent again and confirmed, then late on a healthy network: now it is the node's.
    await ledger_side.router.mark_sent([made[0].assignment_id])
    assert [
        x for x in await ledger_side.router.reroute_expired(planner) if x.job_id == spec.job_id
    ] == []


async def test_at_its_deadline_a_replica_missed_in_an_outage_is_excused_not_charged(
    ledger_side: LedgerSide,
) -> None:
    await no_outages(ledger_side)
    a, b, c = node_ids(3)
    await enrol(ledger_side, [a, b, c])
    spec = job(3, deadline_s=-1.0)
    sent = assignments_for(spec, [(n, HW) for n in (a, b, c)], utcnow() - timedelta(seconds=1))
    await ledger_side.router.open_jobs([NewJob(spec, utcnow(), "running", sent)])
    await ledger_side.router.mark_sent([x.assignment_id for x in sent])
    await ledger_side.guard.take_results(spec.job_id, [answer(sent[0], UP)])
    await ledger_side.guard.record_outages("guard@h:1", [just_now("postgres")])

    decided = [v for v in await ledger_side.guard.decide_expired() if v.job_id == spec.job_id]
    assert len(decided) == 1
    assert decided[0].timed_out == []
    assert await ledger_side.events(spec.job_id) == []
    await ledger_side.guard.expire_stragglers()
    assert await ledger_side.events(spec.job_id) == []


async def test_a_job_whose_deadline_fell_in_an_outage_gets_more_time_once(
    ledger_side: LedgerSide,
) -> None:
    await no_outages(ledger_side)
    a, b = node_ids(2)
    await enrol(ledger_side, [a, b])
    spec = job(2, deadline_s=-1.0)
    sent = assignments_for(spec, [(a, HW), (b, HW)], utcnow() - timedelta(seconds=1))
    await ledger_side.router.open_jobs([NewJob(spec, utcnow(), "running", sent)])
    await ledger_side.router.mark_sent([x.assignment_id for x in sent])
    await ledger_side.router.record_outages("router@h:1", [just_now("rabbitmq", ago_s=10, for_s=9)])

    assert await ledger_side.guard.extend_deadlines() >= 1
    assert [v for v in await ledger_side.guard.decide_expired() if v.job_id == spec.job_id] == []
    # Within its new deadline the router renews its replicas for the same nodes.
    planner = Planner([a, b], {spec.job_id})
    renewed = [
        x for x in await ledger_side.router.reroute_expired(planner) if x.job_id == spec.job_id
    ]
    assert sorted(x.node_id for x in renewed) == sorted([a, b])
    assert all(x.deadline_at > utcnow() for x in renewed)
    assert await ledger_side.events(spec.job_id) == []


# -- results stored before a deadline and not yet taken by a guard ----------------------


async def test_no_deadline_after_the_horizon_is_judged_and_each_before_it_is(
    ledger_side: LedgerSide,
) -> None:
    """A guard died with a result in hand (or fell behind): until the guards have taken
    every result stored before a deadline (cortensor.protocol.outages.judging_horizon),
    neither the router nor a guard times out an assignment, nor decides a job, at it."""
    await no_outages(ledger_side)
    a, b, c = node_ids(3)
    await enrol(ledger_side, [a, b, c])
    running = job(2)  # within its deadline, one replica past its own
    late = assignments_for(running, [(a, HW)], utcnow() - timedelta(seconds=2))
    out = assignments_for(running, [(b, HW)], utcnow() + timedelta(seconds=60))
    ended = job(2, deadline_s=-2.0)  # past its deadline, neither replica answered
    missed = assignments_for(ended, [(a, HW), (c, HW)], utcnow() - timedelta(seconds=2))
    await ledger_side.router.open_jobs(
        [
            NewJob(running, utcnow(), "running", [*late, *out]),
            NewJob(ended, utcnow(), "running", missed),
        ]
    )
    await ledger_side.router.mark_sent([x.assignment_id for x in [*late, *out, *missed]])
    planner = Planner([a, b, c], {running.job_id, ended.job_id})
    before = utcnow() - timedelta(seconds=30)  # a result stored then is still untaken

    assert [
        x
        for x in await ledger_side.router.reroute_expired(planner, horizon=before)
        if x.job_id == running.job_id
    ] == []
    held = await ledger_side.guard.decide_expired(horizon=before)
    assert [v for v in held if v.job_id == ended.job_id] == []
    await ledger_side.guard.expire_stragglers(horizon=before)
    assert await ledger_side.events(running.job_id) == []
    assert await ledger_side.events(ended.job_id) == []

    # The held result comes back and is taken: on time, since nothing judged its deadline.
    intake = await ledger_side.guard.take_results(ended.job_id, [answer(missed[0], UP)])
    assert intake.stored == 1

    # Once every result stored before them is taken, the deadlines are judged.
    now = utcnow()
    made = await ledger_side.router.reroute_expired(planner, horizon=now)
    assert [x.node_id for x in made if x.job_id == running.job_id] == [c]  # a replacement
    taken = await ledger_side.guard.decide_expired(horizon=now)
    decided = [v for v in taken if v.job_id == ended.job_id]
    assert len(decided) == 1
    assert decided[0].timed_out == [c]
    assert sorted(await ledger_side.events(running.job_id)) == [(a, "timed_out")]
    assert (c, "timed_out") in await ledger_side.events(ended.job_id)
    assert (a, "timed_out") not in await ledger_side.events(ended.job_id)
