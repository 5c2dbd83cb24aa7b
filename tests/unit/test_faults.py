"""Deliberate faults: every wrong answer has the right shape and fails the comparator."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from cortensor.comparators.embed import agree, min_cosine
from cortensor.node.faults import FAULT_MODES, Fault

DIM = 384


def truth(n: int = 5, seed: int = 0) -> NDArray[np.float32]:
    matrix = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    unit: NDArray[np.float32] = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return unit


def test_the_three_modes() -> None:
    assert FAULT_MODES == ("random", "lazy", "noisy")


@pytest.mark.parametrize("mode", FAULT_MODES)
@pytest.mark.parametrize("n", [1, 5])
def test_wrong_answers_are_unit_vectors_of_the_same_shape(mode: str, n: int) -> None:
    real = truth(n)
    wrong = Fault(mode, 1.0, seed=1).corrupt(real)  # type: ignore[arg-type]
    assert wrong.shape == real.shape
    assert wrong.dtype == np.float32
    assert np.all(np.isfinite(wrong))
    np.testing.assert_allclose(np.linalg.norm(wrong, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_wrong_answers_disagree_with_the_truth(mode: str) -> None:
    fault = Fault(mode, 1.0, seed=2)  # type: ignore[arg-type]
    for seed in range(10):
        real = truth(4, seed=seed)
        wrong = fault.corrupt(real)
        assert not agree(wrong.tolist(), "int8", real.tolist(), "int8")
        # far below even the loosest threshold (int8 against fp32: 0.95)
        assert not agree(wrong.tolist(), "int8", real.tolist(), "fp32")
        assert min_cosine(wrong, real) < 0.8


def test_noisy_answers_land_near_cosine_0_6() -> None:
    real = truth(50, seed=3)
    wrong = Fault("noisy", 1.0, seed=4).corrupt(real)
    cosines = np.sum(wrong * real, axis=1)
    assert 0.5 < float(cosines.mean()) < 0.7


def test_lazy_answers_are_one_constant_vector() -> None:
    fault = Fault("lazy", 1.0, seed=5)
    a, b = fault.corrupt(truth(3, seed=6)), fault.corrupt(truth(3, seed=7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], a[2])
    # Two lazy nodes agree with each other: a lazy pair could outvote an honest node.
    assert agree(a.tolist(), "fp32", b.tolist(), "fp32")


def test_random_answers_differ_between_calls() -> None:
    fault = Fault("random", 1.0, seed=8)
    real = truth(2)
    assert not agree(fault.corrupt(real), "int8", fault.corrupt(real), "int8")


def test_same_seed_gives_the_same_faults() -> None:
    a, b = Fault("noisy", 0.5, seed=9), Fault("noisy", 0.5, seed=9)
    assert [a.strikes() for _ in range(50)] == [b.strikes() for _ in range(50)]
    np.testing.assert_array_equal(a.corrupt(truth()), b.corrupt(truth()))


def test_rate_zero_never_strikes() -> None:
    fault = Fault("random", 0.0, seed=10)
    assert not any(fault.strikes() for _ in range(2000))


def test_rate_one_always_strikes() -> None:
    fault = Fault("random", 1.0, seed=11)
    assert all(fault.strikes() for _ in range(2000))


def test_rate_sets_the_share_of_wrong_answers() -> None:
    fault = Fault("lazy", 0.25, seed=12)
    hits = sum(fault.strikes() for _ in range(4000))
    assert 800 < hits < 1200


@pytest.mark.parametrize("mode", ["", "evil", "RANDOM", "none"])
def test_unknown_mode_is_a_value_error(mode: str) -> None:
    with pytest.raises(ValueError, match="unknown fault mode"):
        Fault(mode, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [-0.01, 1.01, 2.0, float("nan"), float("inf")])
def test_rate_outside_zero_to_one_is_a_value_error(rate: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Fault("random", rate)
