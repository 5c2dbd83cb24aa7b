"""The ledger's contract: every case runs on PostgreSQL (RouterLedger and GuardLedger, a
database of this module's own) and on the in-memory twin (MemoryLedger), and asks of
both what the router and the guard rely on.

The PostgreSQL side's database is shared by the module's cases, and the sweeps act on
every job in it: each case uses nodes and jobs of its own, plans only its own jobs, and
looks only at its own jobs in what a sweep returns.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from cortensor.adapters.ledger.probes import ProbeOutcome
from cortensor.protocol.planning import Plan
from cortensor.protocol.units import NewJob, OpenJob, assignments_for
from cortensor.schemas import (
    ANONYMOUS,
    Assignment,
    InferenceResult,
    NodeHeartbeat,
    Verdict,
    utcnow,
)
from tests.conftest import eventually
from tests.contract.sides import LedgerSide

MODEL = "all-MiniLM-L6-v2"
HW = "cpu-int8"
UP = [1.0] + [0.0] * 383
ACROSS = [0.0, 1.0] + [0.0] * 382


def node_ids(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"lc-{tag}-{i}" for i in range(n)]


def beat(node_id: str) -> NodeHeartbeat:
    return NodeHeartbeat(
        node_id=node_id,
        hw_class=HW,
        precision="int8",
        tasks=["embed"],
        models=[MODEL],
        capacity=4,
        inflight=0,
        processed=0,
        started_at=utcnow(),
    )


async def enrol(side: LedgerSide, nodes: Sequence[str]) -> None:
    await side.router.upsert_nodes([beat(n) for n in nodes])


def job(
    redundancy: int = 3,
    *,
    auto: bool = False,
    deadline_s: float = 60.0,
    parent_id: UUID | None = None,
    part: int | None = None,
    probe: bool = False,
    params: dict[str, Any] | None = None,
    owner: str = ANONYMOUS,
) -> OpenJob:
    return OpenJob(
        job_id=uuid.uuid4(),
        task="embed",
        model=MODEL,
        redundancy=redundancy,
        hw_class=HW,
        inputs=["hello"],
        deadline_at=utcnow() + timedelta(seconds=deadline_s),
        taken=frozenset(),
        params=params or {},
        parent_id=parent_id,
        part=part,
        auto=auto,
        probe=probe,
        owner=owner,
    )


def running(spec: OpenJob, holders: Sequence[str], *, deadline_s: float = 60.0) -> NewJob:
    """A job sent to `holders` now, their replicas due in `deadline_s`."""
    deadline = utcnow() + timedelta(seconds=deadline_s)
    made = assignments_for(spec, [(n, HW) for n in holders], deadline)
    return NewJob(spec, utcnow(), "running" if made else "waiting", made)


def answer(a: Assignment, vector: list[float], *, node_id: str | None = None) -> InferenceResult:
    return InferenceResult(
        assignment_id=a.assignment_id,
        job_id=a.job_id,
        node_id=node_id or a.node_id,
        task="embed",
        model=MODEL,
        hw_class=HW,
        precision="int8",
        embeddings=[vector],
    )


@dataclass
class Planner:
    """Plans only the test's own jobs, on its nodes, each taken at most once per job."""

    nodes: list[str]
    jobs: set[UUID] = field(default_factory=set)
    asked: list[tuple[UUID, int]] = field(default_factory=list)

    def __call__(self, job: OpenJob, needed: int) -> Plan | str:
        if job.job_id not in self.jobs:
            return "another test's job"
        self.asked.append((job.job_id, needed))
        free = [n for n in self.nodes if n not in job.taken][:needed]
        if not free:
            return "no free node"
        deadline = utcnow() + timedelta(seconds=60)
        return Plan(job, tuple((n, HW) for n in free), deadline, job.redundancy)


def by_node(made: Sequence[Assignment]) -> dict[str, Assignment]:
    return {a.node_id: a for a in made}


async def test_a_job_opened_twice_is_written_once_with_its_first_assignments(
    ledger_side: LedgerSide,
) -> None:
    nodes = node_ids(2)
    await enrol(ledger_side, nodes)
    first = running(job(2), nodes)
    again = running(first.job, nodes)  # the same job, with fresh assignment ids
    assert await ledger_side.router.open_jobs([first]) == {first.job.job_id}
    assert await ledger_side.router.open_jobs([again]) == set()
    out = await ledger_side.router.outstanding([first.job.job_id])
    assert {a.assignment_id for a in out} == {a.assignment_id for a in first.assignments}
    assert {a.inputs[0] for a in out} == {"hello"}


async def test_a_rejected_job_is_recorded_once_with_its_verdict(ledger_side: LedgerSide) -> None:
    job_id = uuid.uuid4()
    verdict = Verdict(job_id=job_id, status="rejected", reason="inputs: empty")
    assert await ledger_side.router.reject(job_id, {"task": "embed"}, verdict)
    assert not await ledger_side.router.reject(job_id, {"task": "embed"}, verdict)
    assert await ledger_side.guard.stored_verdict(job_id) == verdict
    assert (await ledger_side.job(job_id))[0] == "rejected"


async def test_outstanding_is_what_is_still_awaited_within_its_deadline_parts_included(
    ledger_side: LedgerSide,
) -> None:
    a, b, c = node_ids(3)
    await enrol(ledger_side, [a, b, c])
    parent = job(1)
    part = running(job(1, parent_id=parent.job_id, part=0), [c])
    whole = job(2)
    awaited = assignments_for(whole, [(a, HW)], utcnow() + timedelta(seconds=60))
    overdue = assignments_for(whole, [(b, HW)], utcnow() - timedelta(seconds=1))
    await ledger_side.router.open_jobs(
        [
            NewJob(parent, utcnow(), "split"),
            part,
            NewJob(whole, utcnow(), "running", [*awaited, *overdue]),
        ]
    )
    out = await ledger_side.router.outstanding([whole.job_id, parent.job_id])
    assert {x.node_id for x in out} == {a, c}
    await ledger_side.guard.take_results(part.job.job_id, [answer(part.assignments[0], UP)])
    out = await ledger_side.router.outstanding([parent.job_id])
    assert out == []


async def test_results_count_only_from_the_node_holding_the_assignment_and_only_once(
    ledger_side: LedgerSide,
) -> None:
    a, b, c = node_ids(3)
    await enrol(ledger_side, [a, b, c])
    new = running(job(3), [a, b, c])
    job_id = new.job.job_id
    await ledger_side.router.open_jobs([new])
    sent = by_node(new.assignments)
    guard = ledger_side.guard

    first = await guard.take_results(job_id, [answer(sent[a], UP)])
    assert (first.stored, first.verdict, first.ignored) == (1, None, [])
    copy = await guard.take_results(job_id, [answer(sent[a], UP)])
    assert copy.stored == 0
    assert copy.ignored == [f"assignment {sent[a].assignment_id}: duplicate result"]
    forged = await guard.take_results(job_id, [answer(sent[b], UP, node_id=c)])
    assert forged.stored == 0
    assert forged.ignored == [
        f"assignment {sent[b].assignment_id}: not held by the node that answered"
    ]
    assert forged.unheld == [c], "the node that sent it, to be counted as refused"
    assert copy.unheld == [], "a duplicate is its own node's"
    unknown = await guard.take_results(uuid.uuid4(), [])
    assert unknown.ignored
    assert "unknown" in unknown.ignored[0]

    decided = await guard.take_results(job_id, [answer(sent[b], UP)])
    assert decided.new_verdict
    assert decided.verdict is not None
    assert decided.verdict.status == "verified"
    assert sorted(decided.verdict.agreeing) == sorted([a, b])
    assert await guard.stored_verdict(job_id) == decided.verdict
    redelivered = await guard.take_results(job_id, [answer(sent[b], UP)])
    assert (redelivered.stored, redelivered.new_verdict) == (0, False)
    assert redelivered.verdict == decided.verdict
    assert sorted(await ledger_side.events(job_id)) == [(a, "agreed"), (b, "agreed")]

    # The third replica, after the verdict: counted, and held against the canonical answer.
    late = await guard.take_results(job_id, [answer(sent[c], ACROSS)])
    assert late.stored == 1
    assert late.verdict == decided.verdict
    assert not late.new_verdict
    assert sorted(await ledger_side.events(job_id)) == sorted(
        [(a, "agreed"), (b, "agreed"), (c, "disagreed")]
    )
    assert await ledger_side.results(job_id) == 3


async def test_a_late_replica_is_charged_once_replaced_and_its_result_kept_but_not_counted(
    ledger_side: LedgerSide,
) -> None:
    a, b, c = node_ids(3)
    await enrol(ledger_side, [a, b, c])
    spec = job(2)
    late = assignments_for(spec, [(a, HW)], utcnow() - timedelta(seconds=1))
    on_time = assignments_for(spec, [(b, HW)], utcnow() + timedelta(seconds=60))
    await ledger_side.router.open_jobs([NewJob(spec, utcnow(), "running", [*late, *on_time])])
    await ledger_side.router.mark_sent([x.assignment_id for x in [*late, *on_time]])
    planner = Planner([a, b, c], {spec.job_id})

    made = [x for x in await ledger_side.router.reroute_expired(planner) if x.job_id == spec.job_id]
    assert [x.node_id for x in made] == [c]
    assert made[0].attempt == 2
    assert await ledger_side.events(spec.job_id) == [(a, "timed_out")]
    again = await ledger_side.router.reroute_expired(planner)
    assert [x for x in again if x.job_id == spec.job_id] == []
    assert await ledger_side.events(spec.job_id) == [(a, "timed_out")]

    intake = await ledger_side.guard.take_results(spec.job_id, [answer(late[0], UP)])
    assert intake.stored == 0
    assert intake.ignored == [f"assignment {late[0].assignment_id}: result too late"]
    assert await ledger_side.results(spec.job_id) == 1
    assert await ledger_side.events(spec.job_id) == [(a, "timed_out")]


async def test_a_job_past_its_deadline_is_decided_with_what_it_has_and_charged_once(
    ledger_side: LedgerSide,
) -> None:
    a, b, c = node_ids(3)
    await enrol(ledger_side, [a, b, c])
    new = running(job(3, deadline_s=-1.0), [a, b, c], deadline_s=-1.0)
    job_id = new.job.job_id
    await ledger_side.router.open_jobs([new])
    await ledger_side.router.mark_sent([x.assignment_id for x in new.assignments])
    sent = by_node(new.assignments)
    assert (await ledger_side.guard.take_results(job_id, [answer(sent[a], UP)])).verdict is None

    decided = [v for v in await ledger_side.guard.decide_expired() if v.job_id == job_id]
    assert len(decided) == 1
    assert sorted(decided[0].timed_out) == sorted([b, c])
    assert await ledger_side.guard.stored_verdict(job_id) == decided[0]
    charged = [e for e in await ledger_side.events(job_id) if e[1] == "timed_out"]
    assert sorted(charged) == sorted([(b, "timed_out"), (c, "timed_out")])
    assert [v for v in await ledger_side.guard.decide_expired() if v.job_id == job_id] == []
    await ledger_side.guard.expire_stragglers()
    assert sorted(e for e in await ledger_side.events(job_id) if e[1] == "timed_out") == sorted(
        charged
    )


async def test_a_straggler_of_a_decided_job_is_charged_once(ledger_side: LedgerSide) -> None:
    a, b, c = node_ids(3)
    await enrol(ledger_side, [a, b, c])
    spec = job(3)
    sent = assignments_for(spec, [(a, HW), (b, HW)], utcnow() + timedelta(seconds=60))
    slow = assignments_for(spec, [(c, HW)], utcnow() - timedelta(seconds=1))
    await ledger_side.router.open_jobs([NewJob(spec, utcnow(), "running", [*sent, *slow])])
    await ledger_side.router.mark_sent([x.assignment_id for x in [*sent, *slow]])
    intake = await ledger_side.guard.take_results(spec.job_id, [answer(x, UP) for x in sent])
    assert intake.verdict is not None
    assert intake.verdict.status == "verified"

    assert await ledger_side.guard.expire_stragglers() >= 1
    await ledger_side.guard.expire_stragglers()
    assert sorted(await ledger_side.events(spec.job_id)) == sorted(
        [(a, "agreed"), (b, "agreed"), (c, "timed_out")]
    )


async def test_a_waiting_job_is_routed_and_one_past_its_deadline_failed(
    ledger_side: LedgerSide,
) -> None:
    nodes = node_ids(3)
    await enrol(ledger_side, nodes)
    routed, expired = job(2), job(2, deadline_s=-1.0)
    await ledger_side.router.open_jobs([running(routed, []), running(expired, [])])
    planner = Planner(nodes, {routed.job_id, expired.job_id})

    made, failed = await ledger_side.router.route_waiting(planner)
    assert sorted(x.node_id for x in made if x.job_id == routed.job_id) == nodes[:2]
    assert (await ledger_side.job(routed.job_id))[:2] == ("running", 2)
    [verdict] = [v for v in failed if v.job_id == expired.job_id]
    assert verdict.status == "failed"
    assert await ledger_side.guard.stored_verdict(expired.job_id) == verdict
    made, failed = await ledger_side.router.route_waiting(planner)
    assert [x for x in made if x.job_id in planner.jobs] == []
    assert [v for v in failed if v.job_id in planner.jobs] == []


async def test_an_auto_jobs_checks_are_due_only_once_its_leader_has_answered(
    ledger_side: LedgerSide,
) -> None:
    leader, *checkers = node_ids(3)
    await enrol(ledger_side, [leader, *checkers])
    new = running(job(3, auto=True), [leader])
    job_id = new.job.job_id
    await ledger_side.router.open_jobs([new])
    planner = Planner([leader, *checkers], {job_id})
    heard: list[UUID] = []
    stop = await ledger_side.router.listen_due(heard.append)
    try:
        assert await ledger_side.router.top_up(planner, [job_id]) == []
        assert [x for x in await ledger_side.router.top_up(planner) if x.job_id == job_id] == []
        intake = await ledger_side.guard.take_results(job_id, [answer(new.assignments[0], UP)])
        assert intake.verdict is None
        await eventually(lambda: job_id in heard, what="the checks announced as due")
        made = await ledger_side.router.top_up(planner, [job_id])
        assert sorted(x.node_id for x in made) == sorted(checkers)
        assert await ledger_side.router.top_up(planner, [job_id]) == []
    finally:
        await stop()


async def test_a_split_job_is_stitched_when_its_last_part_is_decided(
    ledger_side: LedgerSide,
) -> None:
    a, b = node_ids(2)
    await enrol(ledger_side, [a, b])
    parent = job(1)
    parts = [running(job(1, parent_id=parent.job_id, part=i), [n]) for i, n in enumerate([a, b])]
    await ledger_side.router.open_jobs([NewJob(parent, utcnow(), "split"), *parts])

    last = parts[1].assignments[0]
    one = await ledger_side.guard.take_results(last.job_id, [answer(last, ACROSS)])
    assert one.verdict is not None
    assert one.verdict.status == "verified"
    assert one.parent is None
    first = parts[0].assignments[0]
    two = await ledger_side.guard.take_results(first.job_id, [answer(first, UP)])
    assert two.parent is not None
    assert two.parent.status == "verified"
    assert two.parent.output() == [UP, ACROSS]
    assert await ledger_side.guard.stored_verdict(parent.job_id) == two.parent
    assert (await ledger_side.job(parent.job_id))[0] == "verified"


async def test_an_unchecked_result_is_reopened_and_revised_when_its_node_fails_a_check(
    ledger_side: LedgerSide,
) -> None:
    cheat, b, c = node_ids(3)
    await enrol(ledger_side, [cheat, b, c])
    alone = running(job(1, auto=True), [cheat])
    alone_id = alone.job.job_id
    await ledger_side.router.open_jobs([alone])
    accepted = await ledger_side.guard.take_results(alone_id, [answer(alone.assignments[0], UP)])
    assert accepted.verdict is not None
    assert accepted.verdict.status == "verified"
    assert await ledger_side.job(alone_id) == ("verified", 1, True)
    assert await ledger_side.events(alone_id) == []

    heard: list[UUID] = []
    stop = await ledger_side.router.listen_due(heard.append)
    try:
        check = running(job(3), [cheat, b, c])
        await ledger_side.router.open_jobs([check])
        sent = by_node(check.assignments)
        results = [answer(sent[cheat], ACROSS), answer(sent[b], UP), answer(sent[c], UP)]
        caught = await ledger_side.guard.take_results(check.job.job_id, results)
        assert caught.verdict is not None
        assert caught.verdict.disagreeing == [cheat]
        assert caught.reopened == 1
        await eventually(lambda: alone_id in heard, what="the reopened job announced")
    finally:
        await stop()
    assert await ledger_side.job(alone_id) == ("running", 3, False)

    planner = Planner([cheat, b, c], {alone_id})
    checks = by_node(await ledger_side.router.top_up(planner, [alone_id]))
    assert sorted(checks) == sorted([b, c])
    wait = await ledger_side.guard.take_results(alone_id, [answer(checks[b], ACROSS)])
    assert wait.verdict is None
    revised = await ledger_side.guard.take_results(alone_id, [answer(checks[c], ACROSS)])
    assert revised.new_verdict
    assert revised.verdict is not None
    assert revised.verdict.revision == 1
    assert sorted(revised.verdict.agreeing) == sorted([b, c])
    assert revised.verdict.output() == [ACROSS]
    assert await ledger_side.guard.stored_verdict(alone_id) == revised.verdict
    assert sorted(await ledger_side.events(alone_id)) == sorted(
        [(b, "agreed"), (c, "agreed"), (cheat, "disagreed")]
    )

    stale = await ledger_side.guard.unpublished_verdicts(-1.0, limit=10_000)
    assert revised.verdict in stale
    await ledger_side.guard.mark_published([alone_id])
    stale = await ledger_side.guard.unpublished_verdicts(-1.0, limit=10_000)
    assert all(v.job_id != alone_id for v in stale)


async def test_every_verdict_built_from_a_job_is_its_owners(ledger_side: LedgerSide) -> None:
    owner = f"client-{uuid.uuid4().hex[:6]}"
    a, b, c = node_ids(3)
    await enrol(ledger_side, [a, b, c])
    rejected = uuid.uuid4()
    refusal = Verdict(job_id=rejected, owner=owner, status="rejected", reason="inputs: empty")
    assert await ledger_side.router.reject(rejected, {"task": "embed"}, refusal)
    verified = running(job(1, owner=owner), [a])
    expired = running(job(2, deadline_s=-1.0, owner=owner), [a, b], deadline_s=-1.0)
    lapsed = running(job(1, deadline_s=-1.0, owner=owner), [c], deadline_s=-1.0)
    waiting = running(job(1, deadline_s=-1.0, owner=owner), [])
    parent = job(1, owner=owner)
    parts = [
        running(job(1, parent_id=parent.job_id, part=i, owner=owner), [n])
        for i, n in enumerate([a, b])
    ]
    opened = [verified, expired, lapsed, waiting, NewJob(parent, utcnow(), "split"), *parts]
    await ledger_side.router.open_jobs(opened)
    ours = {n.job.job_id for n in opened} | {rejected}
    assert {await ledger_side.owner(j) for j in ours} == {owner}

    # The guard's verdicts (verified, decided at the deadline, parts and their parent)...
    [leader] = verified.assignments
    made = [(await ledger_side.guard.take_results(leader.job_id, [answer(leader, UP)])).verdict]
    first = by_node(expired.assignments)[a]
    await ledger_side.guard.take_results(first.job_id, [answer(first, UP)])
    made += await ledger_side.guard.decide_expired()
    for part, vector in zip(parts, [UP, ACROSS], strict=True):
        [x] = part.assignments
        intake = await ledger_side.guard.take_results(x.job_id, [answer(x, vector)])
        made += [intake.verdict, intake.parent]
    # ... and the router's (a waiting job failed at its deadline).
    made += (await ledger_side.router.route_waiting(Planner([a, b, c], {waiting.job.job_id})))[1]
    mine = [v for v in made if v is not None and v.job_id in ours]
    assert {v.job_id for v in mine} == ours - {rejected}
    assert {v.owner for v in mine} == {owner}
    stored = [await ledger_side.guard.stored_verdict(j) for j in ours]
    assert {v.owner if v is not None else None for v in stored} == {owner}
    # Verdicts published again after their publisher died go to the owner's subjects too.
    stale = await ledger_side.guard.unpublished_verdicts(-1.0, limit=10_000)
    assert {v.owner for v in stale if v.job_id in ours} == {owner}


async def test_node_stats_show_standing_trust_streaks_and_outstanding_work(
    ledger_side: LedgerSide,
) -> None:
    a, b = node_ids(2)
    await enrol(ledger_side, [a, b])
    new = running(job(1), [a])
    await ledger_side.router.open_jobs([new])
    stats = await ledger_side.router.node_stats()
    assert (stats[a].score, stats[a].outstanding, stats[a].trust) == (0.5, 1, "probation")
    assert (stats[b].outstanding, dict(stats[b].streaks), stats[b].offences) == (0, {}, 0)

    await ledger_side.set_trust(a, "active")
    await ledger_side.guard.take_results(new.job.job_id, [answer(new.assignments[0], UP)])
    stats = await ledger_side.router.node_stats()
    assert (stats[a].outstanding, stats[a].trust) == (0, "active")
    assert stats[a].score > 0.5
    assert dict(stats[a].streaks) == {MODEL: 1}


async def test_the_probe_pool_reads_verified_traffic_its_holders_and_probe_outcomes(
    ledger_side: LedgerSide,
) -> None:
    a, b, c, d = node_ids(4)
    await enrol(ledger_side, [a, b, c, d])
    source = running(job(3), [a, b, c])
    await ledger_side.router.open_jobs([source])
    await ledger_side.guard.take_results(
        source.job.job_id, [answer(x, UP) for x in source.assignments]
    )
    key = str(source.job.job_id)
    [pooled] = [p for p in await ledger_side.router.verified_jobs([MODEL], 10_000) if p.key == key]
    assert pooled.holders == frozenset([a, b, c])
    assert pooled.agreed_at == frozenset(["int8"])
    assert pooled.reference == [UP]
    assert pooled.inputs == ("hello",)

    probe = running(job(1, probe=True, params={"reference": [UP], "source": key}), [d])
    await ledger_side.router.open_jobs([probe])
    assert await ledger_side.router.probe_holders([key]) == {key: [d]}
    after = await ledger_side.router.last_event()
    await ledger_side.guard.take_results(probe.job.job_id, [answer(probe.assignments[0], UP)])
    outcomes = [o for o in await ledger_side.router.probe_outcomes(after) if o.node_id == d]
    assert outcomes == [ProbeOutcome(outcomes[0].event_id, d, True)]
    assert outcomes[0].event_id > after
    assert await ledger_side.router.last_event() >= outcomes[0].event_id


async def test_a_replica_timed_out_before_the_verdict_is_charged_once(
    ledger_side: LedgerSide,
) -> None:
    late, b, c = node_ids(3)
    await enrol(ledger_side, [late, b, c])
    spec = job(3)
    overdue = assignments_for(spec, [(late, HW)], utcnow() - timedelta(seconds=1))
    sent = assignments_for(spec, [(b, HW), (c, HW)], utcnow() + timedelta(seconds=60))
    await ledger_side.router.open_jobs([NewJob(spec, utcnow(), "running", [*overdue, *sent])])
    await ledger_side.router.mark_sent([x.assignment_id for x in [*overdue, *sent]])
    nobody = Planner([], {spec.job_id})
    await ledger_side.router.reroute_expired(nobody)
    assert nobody.asked == [(spec.job_id, 1)]
    intake = await ledger_side.guard.take_results(spec.job_id, [answer(x, UP) for x in sent])
    assert intake.verdict is not None
    assert intake.verdict.timed_out == [late]
    assert sorted(await ledger_side.events(spec.job_id)) == sorted(
        [(late, "timed_out"), (b, "agreed"), (c, "agreed")]
    )


async def test_a_split_vote_raises_the_redundancy_and_the_replicas_it_lacks_are_due(
    ledger_side: LedgerSide,
) -> None:
    nodes = node_ids(5)
    await enrol(ledger_side, nodes)
    first = running(job(2), nodes[:2])
    job_id = first.job.job_id
    await ledger_side.router.open_jobs([first])
    heard: list[UUID] = []
    stop = await ledger_side.router.listen_due(heard.append)
    try:
        a, b = first.assignments
        split = await ledger_side.guard.take_results(job_id, [answer(a, UP), answer(b, ACROSS)])
        assert split.verdict is None
        assert split.escalated == 3
        await eventually(lambda: job_id in heard, what="the extra replica announced")
    finally:
        await stop()
    assert (await ledger_side.job(job_id))[:2] == ("running", 3)
    [extra] = await ledger_side.router.top_up(Planner(nodes, {job_id}), [job_id])
    assert extra.node_id == nodes[2]
    decided = await ledger_side.guard.take_results(job_id, [answer(extra, UP)])
    assert decided.verdict is not None
    assert sorted(decided.verdict.agreeing) == sorted([a.node_id, extra.node_id])
    assert decided.verdict.disagreeing == [b.node_id]


async def test_a_revised_part_revises_its_split_jobs_verdict(ledger_side: LedgerSide) -> None:
    cheat, b, c = node_ids(3)
    await enrol(ledger_side, [cheat, b, c])
    parent = job(1)
    alone = running(job(1, auto=True, parent_id=parent.job_id, part=0), [cheat])
    checked = running(job(1, parent_id=parent.job_id, part=1), [b])
    await ledger_side.router.open_jobs([NewJob(parent, utcnow(), "split"), alone, checked])
    await ledger_side.guard.take_results(checked.job.job_id, [answer(checked.assignments[0], UP)])
    first = await ledger_side.guard.take_results(
        alone.job.job_id, [answer(alone.assignments[0], UP)]
    )
    assert first.parent is not None
    assert first.parent.output() == [UP, UP]

    check = running(job(3), [cheat, b, c])
    await ledger_side.router.open_jobs([check])
    sent = by_node(check.assignments)
    results = [answer(sent[cheat], ACROSS), answer(sent[b], UP), answer(sent[c], UP)]
    caught = await ledger_side.guard.take_results(check.job.job_id, results)
    assert caught.reopened == 1
    checks = await ledger_side.router.top_up(
        Planner([b, c], {alone.job.job_id}), [alone.job.job_id]
    )
    assert len(checks) == 2
    await ledger_side.guard.take_results(alone.job.job_id, [answer(checks[0], ACROSS)])
    revised = await ledger_side.guard.take_results(alone.job.job_id, [answer(checks[1], ACROSS)])
    assert revised.verdict is not None
    assert revised.verdict.revision == 1
    assert revised.parent is not None
    assert revised.parent.revision == 1
    assert revised.parent.output() == [ACROSS, UP]
    assert await ledger_side.guard.stored_verdict(parent.job_id) == revised.parent


async def test_jobs_with_an_assignment_to_an_unknown_node_are_refused_whole(
    ledger_side: LedgerSide,
) -> None:
    [known] = node_ids(1)
    await enrol(ledger_side, [known])
    good = running(job(1), [known])
    bad = running(job(1), [f"{known}-never-announced"])
    with pytest.raises((ValueError, asyncpg.ForeignKeyViolationError)):
        await ledger_side.router.open_jobs([good, bad])
    assert await ledger_side.router.outstanding([good.job.job_id, bad.job.job_id]) == []
    assert await ledger_side.router.open_jobs([good]) == {good.job.job_id}
