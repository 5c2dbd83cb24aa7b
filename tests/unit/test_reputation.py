"""Reputation arithmetic: the Beta(1, 1) posterior mean of a node's record."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.protocol.reputation import PRIOR_SCORE, Record, score, tally


def test_a_new_node_starts_at_the_prior() -> None:
    assert score(Record()) == PRIOR_SCORE == 0.5


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (Record(agreed=1), Fraction(2, 3)),
        (Record(disagreed=1), Fraction(1, 3)),
        (Record(timed_out=1), Fraction(1, 3)),
        (Record(agreed=8), Fraction(9, 10)),
        (Record(agreed=3, disagreed=1), Fraction(4, 6)),
        (Record(agreed=2, disagreed=1, timed_out=1), Fraction(3, 6)),
        (Record(agreed=98), Fraction(99, 100)),
        (Record(disagreed=5, timed_out=3), Fraction(1, 10)),
    ],
)
def test_score_values(record: Record, expected: Fraction) -> None:
    assert score(record) == pytest.approx(float(expected))


def test_disagreeing_and_timing_out_weigh_the_same() -> None:
    assert score(Record(agreed=4, disagreed=2)) == score(Record(agreed=4, timed_out=2))


def test_observations_counts_every_event() -> None:
    assert Record(agreed=3, disagreed=2, timed_out=1).observations == 6
    assert Record().observations == 0


_COUNTS = st.integers(0, 10**6)


@given(_COUNTS, _COUNTS, _COUNTS)
def test_score_is_strictly_between_zero_and_one(a: int, d: int, t: int) -> None:
    assert 0.0 < score(Record(a, d, t)) < 1.0


@given(_COUNTS, _COUNTS, _COUNTS)
def test_more_agreement_raises_and_more_faults_lower_the_score(a: int, d: int, t: int) -> None:
    base = score(Record(a, d, t))
    assert score(Record(a + 1, d, t)) > base
    assert score(Record(a, d + 1, t)) < base
    assert score(Record(a, d, t + 1)) < base


@given(_COUNTS, _COUNTS)
def test_score_is_above_the_prior_exactly_when_agreements_outnumber_faults(
    a: int, faults: int
) -> None:
    s = score(Record(agreed=a, disagreed=faults))
    if a > faults:
        assert s > PRIOR_SCORE
    elif a < faults:
        assert s < PRIOR_SCORE
    else:
        assert s == PRIOR_SCORE


def test_tally_counts_each_kind() -> None:
    record = tally(["agreed", "agreed", "timed_out", "disagreed", "agreed"])
    assert record == Record(agreed=3, disagreed=1, timed_out=1)
    assert tally([]) == Record()
    assert tally(iter(["timed_out"] * 4)) == Record(timed_out=4)  # type: ignore[arg-type]


def test_tally_rejects_an_unknown_kind() -> None:
    with pytest.raises(KeyError):
        tally(["agreed", "cheated"])  # type: ignore[list-item]


@given(st.lists(st.sampled_from(["agreed", "disagreed", "timed_out"]), max_size=50))
def test_tally_matches_counting_and_feeds_score(kinds: list[str]) -> None:
    record = tally(kinds)  # type: ignore[arg-type]
    assert record.agreed == kinds.count("agreed")
    assert record.disagreed == kinds.count("disagreed")
    assert record.timed_out == kinds.count("timed_out")
    assert record.observations == len(kinds)
    assert score(record) == pytest.approx((kinds.count("agreed") + 1) / (len(kinds) + 2))
