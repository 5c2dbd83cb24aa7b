"""The error tables: what a consumer does with a message, and what the command exits with."""

from __future__ import annotations

import inspect
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError, field_validator

from cortensor import errors
from cortensor.errors import (
    DISPOSITION,
    EXIT_CODE,
    BadInput,
    BadSetting,
    BrokerUnavailable,
    Busy,
    CortensorError,
    Disposition,
    LedgerUnavailable,
    ModelsNotPrepared,
    NoEligibleNodes,
    NoVerdictYet,
    PermanentError,
    RetryableError,
    SetupIncomplete,
    UnknownJob,
    backoff_s,
    disposition,
    exit_code,
)

# Written out by hand, not read from the tables, so that a change to a table is a
# change to this test too.
EXPECTED: dict[type[Exception], tuple[Disposition, int]] = {
    CortensorError: (Disposition.DEAD_LETTER, 4),
    PermanentError: (Disposition.DEAD_LETTER, 4),
    SetupIncomplete: (Disposition.DEAD_LETTER, 4),
    ModelsNotPrepared: (Disposition.DEAD_LETTER, 4),
    BadInput: (Disposition.REJECT, 2),
    BadSetting: (Disposition.REJECT, 2),
    RetryableError: (Disposition.REQUEUE, 3),
    NoEligibleNodes: (Disposition.REQUEUE, 3),
    LedgerUnavailable: (Disposition.REQUEUE, 3),
    BrokerUnavailable: (Disposition.REQUEUE, 3),
    NoVerdictYet: (Disposition.REQUEUE, 5),
    UnknownJob: (Disposition.DEAD_LETTER, 6),
    Busy: (Disposition.REQUEUE, 75),
    RuntimeError: (Disposition.REQUEUE, 70),
    KeyError: (Disposition.REQUEUE, 70),
}


def test_every_error_class_of_the_module_is_in_the_expectations() -> None:
    declared = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, CortensorError)
    }
    assert declared == {cls for cls in EXPECTED if issubclass(cls, CortensorError)}


@pytest.mark.parametrize(("cls", "expected"), EXPECTED.items(), ids=lambda c: str(c))
def test_each_class_gets_its_disposition_and_exit_code(
    cls: type[Exception], expected: tuple[Disposition, int]
) -> None:
    exc = cls("why")
    assert (disposition(exc), exit_code(exc)) == expected


def test_a_new_subclass_inherits_its_parents_rows() -> None:
    class StaleReport(SetupIncomplete):
        pass

    class QueueFull(RetryableError):
        pass

    assert disposition(StaleReport()) is Disposition.DEAD_LETTER
    assert exit_code(StaleReport()) == 4
    assert disposition(QueueFull()) is Disposition.REQUEUE
    assert exit_code(QueueFull()) == 3


def test_a_base_exception_that_is_no_exception_has_no_row() -> None:
    with pytest.raises(LookupError, match="KeyboardInterrupt"):
        disposition(KeyboardInterrupt())
    assert KeyboardInterrupt not in DISPOSITION
    assert KeyboardInterrupt not in EXIT_CODE


def test_exit_codes_do_not_collide_with_success_or_a_negative_answer() -> None:
    assert errors.EXIT_OK == 0
    assert errors.EXIT_NO == 1
    assert not {errors.EXIT_OK, errors.EXIT_NO} & set(EXIT_CODE.values())


def test_control_signals_are_not_errors() -> None:
    from cortensor.protocol.intake import Rejected, Undeliverable

    assert not issubclass(Rejected, BaseException)
    assert not issubclass(Undeliverable, BaseException)


def test_bad_input_raised_in_a_validator_is_the_fields_error() -> None:
    class Job(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def _positive(cls, n: int) -> int:
            if n < 1:
                raise BadInput("n must be at least 1")
            return n

    with pytest.raises(ValidationError, match="n must be at least 1"):
        Job(n=0)
    assert issubclass(BadInput, ValueError), "callers that catch ValueError still do"


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    base=st.floats(min_value=0.001, max_value=10.0),
    cap=st.floats(min_value=0.001, max_value=600.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 60))
    wait = backoff_s(attempt, base_s=base, cap_s=cap, rng=random.Random(seed))
    assert ceiling / 2 <= wait <= ceiling
    assert wait <= cap


def test_backoff_grows_then_stays_at_the_cap() -> None:
    rng = random.Random(3)
    waits = [backoff_s(n, base_s=1.0, cap_s=8.0, rng=rng) for n in range(1, 9)]
    assert 0.5 <= waits[0] <= 1.0
    assert 1.0 <= waits[1] <= 2.0
    assert all(4.0 <= w <= 8.0 for w in waits[3:])
    assert len(set(waits[3:])) > 1, "jitter: retries that failed together spread out"


def test_backoff_counts_attempts_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        backoff_s(0, base_s=1.0, cap_s=2.0, rng=random.Random(0))
