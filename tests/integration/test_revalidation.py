"""A result accepted unreplicated is re-validated when its node fails a spot-check, and
a wrong verdict is corrected as a new revision the client can read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.protocol.parts import split_job
from cortensor.protocol.planning import Plan
from cortensor.protocol.units import NewJob, OpenJob, whole_job
from cortensor.schemas import Assignment, JobRequest
from tests.integration.test_ledger_store import (
    assignments_for,
    embeddings,
    events_of,
    heartbeat,
    in_s,
    job_status,
    node_ids,
    result_for,
)

pytestmark = [pytest.mark.postgres]


def on(job: OpenJob, nodes: Sequence[str]) -> Plan:
    """A plan that sends the job's replicas to these nodes."""
    return Plan(job, tuple((n, "cpu-fp32") for n in nodes), in_s(600), job.redundancy)


async def open_on(
    router: RouterLedger, nodes: Sequence[str], *, solo: bool
) -> tuple[JobRequest, list[Assignment]]:
    """An auto job, as the router records it: alone on one node, or on three."""
    job = JobRequest(inputs=["a text", "another"])
    assert job.redundancy == "auto"
    unit = whole_job(job, in_s(600))
    if solo:
        unit = replace(unit, redundancy=1)
    made = assignments_for(job, nodes, in_s(600))
    assert await router.open_jobs([NewJob(unit, job.created_at, "running", made)])
    return job, made


async def test_a_failed_spot_check_corrects_the_nodes_unchecked_result(
    router: RouterLedger, guard: GuardLedger
) -> None:
    x, a, b = node_ids(3)
    await router.upsert_nodes([heartbeat(n) for n in (x, a, b)])
    truth, lie = embeddings(), embeddings()

    # x's answer to a job it ran alone is accepted, unchecked: no event yet.
    solo, [alone] = await open_on(router, [x], solo=True)
    first = await guard.take_results(solo.job_id, [result_for(alone, lie)])
    assert first.verdict is not None
    assert (first.verdict.status, first.verdict.revision) == ("verified", 0)
    assert await events_of(guard, solo.job_id) == {}
    assert await guard.pool.fetchval("SELECT unchecked FROM jobs WHERE job_id = $1", solo.job_id)

    # A spot-check catches x: its unchecked result is reopened for two more nodes.
    checked, replicas = await open_on(router, [x, a, b], solo=False)
    answers = {x: lie, a: truth, b: truth}
    caught = await guard.take_results(
        checked.job_id, [result_for(r, answers[r.node_id]) for r in replicas]
    )
    assert caught.verdict is not None
    assert caught.verdict.disagreeing == [x]
    assert caught.reopened == 1
    assert await job_status(guard, solo.job_id) == "running"

    def plan(job: OpenJob, needed: int) -> Plan:
        assert job.taken == frozenset({x})
        return on(job, [a, b][:needed])

    checkers = [m for m in await router.top_up(plan) if m.job_id == solo.job_id]
    assert sorted(m.node_id for m in checkers) == sorted([a, b])

    again = await guard.take_results(solo.job_id, [result_for(m, truth) for m in checkers])
    corrected = again.verdict
    assert corrected is not None
    assert corrected.revision == 1
    assert corrected.status == "verified"
    assert corrected.embeddings == truth
    assert sorted(corrected.agreeing) == sorted([a, b])
    assert "was wrong and is corrected" in corrected.reason
    assert (await guard.stored_verdict(solo.job_id)) == corrected
    events = await events_of(guard, solo.job_id)
    assert events[x] == ("disagreed", alone.assignment_id)
    assert {events[a][0], events[b][0]} == {"agreed"}
    assert not await guard.pool.fetchval(
        "SELECT unchecked FROM jobs WHERE job_id = $1", solo.job_id
    )


async def test_a_failed_probe_reopens_the_nodes_unchecked_results(
    router: RouterLedger, guard: GuardLedger
) -> None:
    x, a = node_ids(2)
    await router.upsert_nodes([heartbeat(n) for n in (x, a)])
    truth, lie = embeddings(), embeddings()
    solo, [alone] = await open_on(router, [x], solo=True)
    await guard.take_results(solo.job_id, [result_for(alone, lie)])

    # A known-answer probe, recorded as the router records one, catches x.
    request = JobRequest(inputs=["a probe text"], redundancy=1)
    probe = replace(
        whole_job(request, in_s(600)),
        probe=True,
        params={"reference": truth, "reference_precision": "fp32"},
    )
    [sent] = assignments_for(request, [x], in_s(600))
    assert await router.open_jobs([NewJob(probe, request.created_at, "running", [sent])])
    failed = await guard.take_results(request.job_id, [result_for(sent, lie)])
    assert failed.reopened == 1
    assert await job_status(guard, solo.job_id) == "running"
    events = await events_of(guard, request.job_id)
    assert events[x][0] == "disagreed"


async def test_a_right_unchecked_answer_stands_and_earns_its_event(
    router: RouterLedger, guard: GuardLedger
) -> None:
    x, a, b = node_ids(3)
    await router.upsert_nodes([heartbeat(n) for n in (x, a, b)])
    truth = embeddings()
    solo, [alone] = await open_on(router, [x], solo=True)
    await guard.take_results(solo.job_id, [result_for(alone, truth)])
    checked, replicas = await open_on(router, [x, a, b], solo=False)
    answers = {x: embeddings(), a: truth, b: truth}
    await guard.take_results(checked.job_id, [result_for(r, answers[r.node_id]) for r in replicas])

    def plan(job: OpenJob, needed: int) -> Plan:
        return on(job, [a, b][:needed])

    checkers = [m for m in await router.top_up(plan) if m.job_id == solo.job_id]
    again = await guard.take_results(solo.job_id, [result_for(m, truth) for m in checkers])
    assert again.verdict is not None
    assert again.verdict.revision == 1
    assert "stands" in again.verdict.reason
    assert x in again.verdict.agreeing
    assert (await events_of(guard, solo.job_id))[x] == ("agreed", alone.assignment_id)


async def test_no_majority_asks_the_router_for_more_replicas(
    router: RouterLedger, guard: GuardLedger
) -> None:
    nodes = node_ids(5)
    await router.upsert_nodes([heartbeat(n) for n in nodes])
    job, replicas = await open_on(router, nodes[:3], solo=False)
    split = await guard.take_results(job.job_id, [result_for(r, embeddings()) for r in replicas])
    assert (split.verdict, split.escalated) == (None, 5)

    def plan(open_job: OpenJob, needed: int) -> Plan:
        assert open_job.taken == frozenset(nodes[:3])
        return on(open_job, nodes[3:][:needed])

    more = [m for m in await router.top_up(plan) if m.job_id == job.job_id]
    assert sorted(m.node_id for m in more) == sorted(nodes[3:])
    truth = embeddings()
    done = await guard.take_results(job.job_id, [result_for(m, truth) for m in more])
    # Two of five agree: still no strict majority of five (3 needed), and 5 < 7.
    assert (done.verdict, done.escalated) == (None, 7)


async def test_a_corrected_part_restitches_its_split_job(
    router: RouterLedger, guard: GuardLedger
) -> None:
    x, a, b = node_ids(3)
    await router.upsert_nodes([heartbeat(n) for n in (x, a, b)])
    job = JobRequest(inputs=["one", "two", "three", "four"])
    parent, units = split_job(job, in_s(600), shard_inputs=2)
    assert parent is not None
    solo = [replace(u, redundancy=1) for u in units]
    made = {u.job_id: assignments_for(u, [x], in_s(600)) for u in solo}
    await router.open_jobs(
        [NewJob(parent, job.created_at, "split")]
        + [NewJob(u, job.created_at, "running", made[u.job_id]) for u in solo]
    )
    truth = {u.job_id: embeddings() for u in solo}
    lie = embeddings()
    # x answers part 0 wrongly and part 1 rightly; both are accepted unchecked.
    answers = {solo[0].job_id: lie, solo[1].job_id: truth[solo[1].job_id]}
    for u in solo:
        decided = await guard.take_results(
            u.job_id, [result_for(made[u.job_id][0], answers[u.job_id])]
        )
    assert decided.parent is not None
    assert decided.parent.embeddings == lie + truth[solo[1].job_id]

    checked, replicas = await open_on(router, [x, a, b], solo=False)
    good = embeddings()
    await guard.take_results(
        checked.job_id,
        [result_for(r, lie if r.node_id == x else good) for r in replicas],
    )

    def plan(open_job: OpenJob, needed: int) -> Plan:
        return on(open_job, [a, b][:needed])

    checkers = await router.top_up(plan)
    parents = []
    for u in solo:
        mine = [m for m in checkers if m.job_id == u.job_id]
        assert len(mine) == 2
        again = await guard.take_results(u.job_id, [result_for(m, truth[u.job_id]) for m in mine])
        assert again.verdict is not None
        assert again.verdict.revision == 1
        assert again.parent is not None
        parents.append(again.parent)
    # Each revised part re-stitched the job; the last revision holds the right answers.
    assert [p.revision for p in parents] == [1, 2]
    final = parents[-1]
    assert final.embeddings == truth[solo[0].job_id] + truth[solo[1].job_id]
    assert await guard.stored_verdict(parent.job_id) == final
