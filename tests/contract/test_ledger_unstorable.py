"""A value the ledger cannot store, on PostgreSQL and on the twin alike: the guard's
ledger raises BadInput (no retry stores it), stores nothing of that batch, and takes
the job's good results as if the bad one had never come."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cortensor.errors import BadInput
from cortensor.schemas import InferenceResult
from tests.contract.sides import LedgerSide
from tests.contract.test_ledger_contract import UP, answer, enrol, job, node_ids, running

UNSTORABLE: list[Any] = [
    pytest.param({"error": "out of memory\x00", "embeddings": None}, id="nul-in-error"),
    pytest.param({"error": "\udc80", "embeddings": None}, id="lone-surrogate-in-error"),
    pytest.param({"embeddings": [[math.nan, *UP[1:]]]}, id="nan-in-output"),
]


@pytest.mark.parametrize("bad", UNSTORABLE)
async def test_a_result_the_ledger_cannot_store_is_bad_input_and_stores_nothing(
    ledger_side: LedgerSide, bad: dict[str, Any]
) -> None:
    a, b = node_ids(2)
    await enrol(ledger_side, [a, b])
    new = running(job(2), [a, b])
    await ledger_side.router.open_jobs([new])
    first, second = new.assignments
    # Built without validation: the schema refuses these; the ledger must too.
    fields = answer(first, UP).model_dump()
    unchecked = InferenceResult.model_construct(**{**fields, **bad})
    guard = ledger_side.guard

    with pytest.raises(BadInput, match="the ledger cannot store this"):
        await guard.take_results(new.job.job_id, [answer(second, UP), unchecked])
    assert await ledger_side.results(new.job.job_id) == 0

    decided = await guard.take_results(new.job.job_id, [answer(second, UP), answer(first, UP)])
    assert decided.stored == 2
    assert decided.verdict is not None
    assert decided.verdict.status == "verified"
