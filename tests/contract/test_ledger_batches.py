"""Several jobs' results in one transaction (GuardLedger.take_many), on PostgreSQL and
on the twin: the same outcome for each job as taking it alone, whatever the batch
holds; a value the ledger cannot store fails the whole batch with nothing stored."""

from __future__ import annotations

import math
import uuid

import pytest

from cortensor.errors import BadInput
from cortensor.schemas import InferenceResult
from tests.contract.sides import LedgerSide
from tests.contract.test_ledger_contract import (
    ACROSS,
    UP,
    answer,
    by_node,
    enrol,
    job,
    node_ids,
    running,
)


async def test_one_batch_decides_each_job_as_if_it_came_alone(ledger_side: LedgerSide) -> None:
    a, b, c = nodes = node_ids(3)
    await enrol(ledger_side, nodes)
    agreed, split, single, waiting, decided = (running(job(k), nodes[:k]) for k in (2, 2, 1, 3, 1))
    await ledger_side.router.open_jobs([agreed, split, single, waiting, decided])
    guard = ledger_side.guard
    first = await guard.take_results(decided.job.job_id, [answer(decided.assignments[0], UP)])
    assert first.verdict is not None
    aa, sa, wa = (
        by_node(agreed.assignments),
        by_node(split.assignments),
        by_node(waiting.assignments),
    )
    stranger = uuid.uuid4()

    intakes = await guard.take_many(
        {
            agreed.job.job_id: [answer(aa[a], UP), answer(aa[b], UP)],
            split.job.job_id: [answer(sa[a], UP), answer(sa[b], ACROSS)],
            single.job.job_id: [answer(single.assignments[0], UP)],
            waiting.job.job_id: [answer(wa[a], UP), answer(wa[c], UP, node_id=b)],
            decided.job.job_id: [answer(decided.assignments[0], UP)],
            stranger: [],
        }
    )

    both = intakes[agreed.job.job_id]
    assert (both.stored, both.new_verdict) == (2, True)
    assert both.verdict is not None
    assert both.verdict.status == "verified"
    assert sorted(both.verdict.agreeing) == sorted([a, b])
    vote = intakes[split.job.job_id]
    assert vote.stored == 2
    assert (vote.escalated, vote.verdict) == (3, None), "a split vote asks for a third replica"
    lone = intakes[single.job.job_id]
    assert lone.verdict is not None
    assert lone.verdict.status == "verified"
    half = intakes[waiting.job.job_id]
    assert (half.stored, half.verdict, half.unheld) == (1, None, [b])
    again = intakes[decided.job.job_id]
    assert (again.stored, again.new_verdict) == (0, False)
    assert again.verdict == first.verdict
    assert "unknown" in intakes[stranger].ignored[0]
    assert sorted(await ledger_side.events(agreed.job.job_id)) == sorted(
        [(a, "agreed"), (b, "agreed")]
    )
    assert (await ledger_side.job(single.job.job_id))[0] == "verified"
    assert (await ledger_side.job(waiting.job.job_id))[0] == "running"


async def test_replicas_are_read_back_in_the_order_the_guard_weighed_them(
    ledger_side: LedgerSide,
) -> None:
    """The results of one statement share their transaction's time, and a transaction that
    waited on the job's lock may have begun before the one it waited for: the order read
    back (re-validation, the replay of decisions) is the order the guard counted them in,
    whatever their assignment ids."""
    nodes = node_ids(4)
    await enrol(ledger_side, nodes)
    opened = running(job(4), nodes)
    await ledger_side.router.open_jobs([opened])
    held = by_node(opened.assignments)
    # Against assignment-id order, both ways, so that no tie-break can pass by chance.
    order = sorted(nodes, key=lambda n: held[n].assignment_id, reverse=True)
    first, second = order[:2], sorted(order[2:], key=lambda n: held[n].assignment_id)
    guard = ledger_side.guard
    await guard.take_many({opened.job.job_id: [answer(held[n], UP) for n in first]})
    await guard.take_many({opened.job.job_id: [answer(held[n], UP) for n in second]})

    assert await ledger_side.arrivals(opened.job.job_id) == first + second


async def test_a_result_for_another_class_than_its_assignments_is_not_held(
    ledger_side: LedgerSide,
) -> None:
    """Its precision follows its class: a node that answers an int8 assignment as an fp32
    node, to be weighed across precisions, is refused like an assignment it does not hold."""
    nodes = node_ids(2)
    await enrol(ledger_side, nodes)
    opened = running(job(2), nodes)
    await ledger_side.router.open_jobs([opened])
    honest, liar = opened.assignments
    posed = answer(liar, UP).model_copy(update={"hw_class": "cpu-fp32", "precision": "fp32"})

    intake = (await ledger_side.guard.take_many({opened.job.job_id: [answer(honest, UP), posed]}))[
        opened.job.job_id
    ]

    assert intake.stored == 1
    assert intake.unheld == [liar.node_id]
    assert await ledger_side.arrivals(opened.job.job_id) == [honest.node_id]
    assert intake.verdict is None, "one of two replicas is no majority"


async def test_a_value_the_ledger_cannot_store_fails_the_batch_and_stores_nothing(
    ledger_side: LedgerSide,
) -> None:
    a, b = nodes = node_ids(2)
    await enrol(ledger_side, nodes)
    good, bad = running(job(1), [a]), running(job(1), [b])
    await ledger_side.router.open_jobs([good, bad])
    fields = answer(bad.assignments[0], UP).model_dump()
    # Built without validation: the schema refuses this; the ledger must too.
    nan = InferenceResult.model_construct(**{**fields, "embeddings": [[math.nan, *UP[1:]]]})

    with pytest.raises(BadInput, match="the ledger cannot store this"):
        await ledger_side.guard.take_many(
            {good.job.job_id: [answer(good.assignments[0], UP)], bad.job.job_id: [nan]}
        )
    assert await ledger_side.results(good.job.job_id) == 0
    assert await ledger_side.results(bad.job.job_id) == 0
    alone = await ledger_side.guard.take_results(good.job.job_id, [answer(good.assignments[0], UP)])
    assert alone.verdict is not None
    assert alone.verdict.status == "verified"
