"""The embedding comparator: when two replicas' vectors are the same answer."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from cortensor.comparators import COMPARATORS
from cortensor.comparators.embed import THRESHOLDS, agree, as_matrix, min_cosine, threshold

DIM = 384
PRECISIONS = ("fp32", "fp16", "int8")


def unit_rows(n: int, seed: int, dim: int = DIM) -> NDArray[np.float64]:
    matrix = np.random.default_rng(seed).standard_normal((n, dim))
    unit: NDArray[np.float64] = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return unit


def with_cosine(base: NDArray[np.float64], cosine: float, seed: int) -> NDArray[np.float64]:
    """Rows at exactly `cosine` to the rows of `base` (unit rows)."""
    noise = np.random.default_rng(seed).standard_normal(base.shape)
    noise -= np.sum(noise * base, axis=1, keepdims=True) * base  # orthogonal to base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return cosine * base + math.sqrt(1 - cosine**2) * noise


def test_embed_is_the_comparator_of_the_embed_task() -> None:
    assert COMPARATORS["embed"] is agree


@pytest.mark.parametrize("a", PRECISIONS)
@pytest.mark.parametrize("b", PRECISIONS)
def test_identical_vectors_agree_for_every_precision_pair(a: str, b: str) -> None:
    vectors = unit_rows(4, seed=1).tolist()
    assert min_cosine(vectors, vectors) == pytest.approx(1.0)
    assert agree(vectors, a, vectors, b)


def test_scaling_a_vector_does_not_change_agreement() -> None:
    vectors = unit_rows(3, seed=2)
    assert agree(vectors * 7.5, "fp32", vectors, "fp32")


def test_thresholds_are_symmetric_and_stricter_for_matching_precision() -> None:
    for a in PRECISIONS:
        for b in PRECISIONS:
            assert threshold(a, b) == threshold(b, a)
    assert threshold("fp32", "fp32") > threshold("fp32", "fp16") > threshold("fp32", "int8")
    assert threshold("int8", "int8") > threshold("fp32", "int8")
    assert threshold("fp16", "fp16") > threshold("fp16", "int8")
    assert threshold("fp32", "fp32") == THRESHOLDS[frozenset({"fp32"})] == 0.999
    assert threshold("fp32", "int8") == 0.95
    # An unknown precision falls back to the loosest known threshold.
    assert threshold("fp32", "bf16") == 0.95


@pytest.mark.parametrize(
    ("a", "b", "cosine", "expected"),
    [
        ("fp32", "fp32", 0.9995, True),
        ("fp32", "fp32", 0.998, False),
        ("fp32", "int8", 0.998, True),  # the same gap is fine across precisions
        ("fp32", "int8", 0.962, True),  # the measured worst case of int8 vs fp32
        ("fp32", "int8", 0.94, False),
        ("int8", "int8", 0.995, True),
        ("int8", "int8", 0.98, False),
        ("fp16", "fp16", 0.996, True),
        ("fp16", "fp16", 0.99, False),
        ("fp16", "fp32", 0.996, True),
        ("fp16", "int8", 0.96, True),
    ],
)
def test_threshold_per_precision_pair(a: str, b: str, cosine: float, expected: bool) -> None:
    base = unit_rows(3, seed=3)
    other = with_cosine(base, cosine, seed=4)
    assert min_cosine(base, other) == pytest.approx(cosine)
    assert agree(base.tolist(), a, other.tolist(), b) is expected


def test_one_bad_row_makes_the_whole_output_disagree() -> None:
    base = unit_rows(5, seed=5)
    other = base.copy()
    other[3] = with_cosine(base[3:4], 0.5, seed=6)[0]
    assert min_cosine(base, other) == pytest.approx(0.5)
    assert not agree(base, "int8", other, "int8")


def test_random_unit_vectors_in_384_dimensions_disagree() -> None:
    for seed in range(20):
        a, b = unit_rows(2, seed=seed), unit_rows(2, seed=1000 + seed)
        # Random directions in 384-d are nearly orthogonal: |cos| is about 1/sqrt(384).
        assert abs(min_cosine(a, b)) < 0.3
        for p in PRECISIONS:
            for q in PRECISIONS:
                assert not agree(a, p, b, q)


def test_opposite_vectors_disagree() -> None:
    a = unit_rows(2, seed=9)
    assert min_cosine(a, -a) == pytest.approx(-1.0)
    assert not agree(a, "fp32", -a, "int8")


GOOD = [[0.6, 0.8], [1.0, 0.0]]


@pytest.mark.parametrize(
    "other",
    [
        pytest.param([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]], id="wider-rows"),
        pytest.param([[0.6, 0.8]], id="fewer-rows"),
        pytest.param([[0.6, 0.8], [1.0, 0.0], [1.0, 0.0]], id="more-rows"),
        pytest.param([[0.6], [1.0]], id="narrower-rows"),
    ],
)
def test_shape_mismatch_disagrees(other: list[list[float]]) -> None:
    assert min_cosine(GOOD, other) == -1.0
    assert min_cosine(other, GOOD) == -1.0
    assert not agree(GOOD, "int8", other, "int8")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([0.6, 0.8], id="one-dimensional"),
        pytest.param([[[0.6, 0.8]], [[1.0, 0.0]]], id="three-dimensional"),
        pytest.param([[0.6, math.nan], [1.0, 0.0]], id="nan"),
        pytest.param([[0.6, math.inf], [1.0, 0.0]], id="inf"),
        pytest.param([], id="empty-list"),
        pytest.param([[]], id="empty-row"),
        pytest.param([[0.0, 0.0], [1.0, 0.0]], id="zero-vector"),
        pytest.param([[0.6, 0.8], [1.0]], id="ragged"),
        pytest.param([["a", "b"], [1.0, 0.0]], id="strings"),
        pytest.param([[{"x": 1}, 0.8], [1.0, 0.0]], id="dict-in-row"),
        pytest.param({"embeddings": GOOD}, id="dict"),
        pytest.param("[[0.6, 0.8], [1.0, 0.0]]", id="json-text"),
        pytest.param(None, id="none"),
        pytest.param([[None, None], [None, None]], id="nulls"),
        pytest.param(3.0, id="scalar"),
        pytest.param(object(), id="object"),
    ],
)
def test_malformed_output_disagrees_and_never_raises(bad: Any) -> None:
    assert min_cosine(GOOD, bad) == -1.0
    assert min_cosine(bad, GOOD) == -1.0
    assert min_cosine(bad, bad) == -1.0
    assert not agree(GOOD, "fp32", bad, "fp32")
    assert not agree(bad, "int8", bad, "int8")


def test_as_matrix_normalises_rows() -> None:
    matrix = as_matrix([[3.0, 4.0], [0.0, -2.0]])
    assert matrix is not None
    assert matrix.tolist() == [[0.6, 0.8], [0.0, -1.0]]


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


@given(a=_JSON, b=_JSON)
def test_min_cosine_never_raises_on_json_like_garbage(a: Any, b: Any) -> None:
    # Huge finite floats overflow the norm (a RuntimeWarning, an error under pytest).
    with np.errstate(all="ignore"):
        value = min_cosine(a, b)
        agreed = agree(a, "fp32", b, "int8")
    assert value == -1.0 or -1.0 - 1e-9 <= value <= 1.0 + 1e-9
    assert isinstance(agreed, bool)
    if as_matrix(a) is None or as_matrix(b) is None:
        assert value == -1.0
        assert not agreed


# Components below 1e-100 square into subnormals, where the norm loses digits (the
# cosine of such a vector with itself comes out as 1.00003); embeddings never get there.
_COMPONENT = st.floats(-1e6, 1e6).filter(lambda x: x == 0 or abs(x) > 1e-100)
_VECTORS = st.integers(1, 4).flatmap(
    lambda n: st.integers(1, 16).flatmap(
        lambda d: st.lists(st.lists(_COMPONENT, min_size=d, max_size=d), min_size=n, max_size=n)
    )
)


@given(_VECTORS)
def test_any_nonzero_output_agrees_with_itself(vectors: list[list[float]]) -> None:
    if as_matrix(vectors) is None:
        assert min_cosine(vectors, vectors) == -1.0  # a zero (or underflowing) row
        return
    assert min_cosine(vectors, vectors) == pytest.approx(1.0)
    assert agree(vectors, "fp32", vectors, "fp32")


@given(_VECTORS, _VECTORS)
def test_min_cosine_is_symmetric_and_bounded(a: list[list[float]], b: list[list[float]]) -> None:
    ab, ba = min_cosine(a, b), min_cosine(b, a)
    assert ab == pytest.approx(ba)
    assert -1.0 - 1e-9 <= ab <= 1.0 + 1e-9


def test_integer_beyond_float_range_disagrees_instead_of_raising() -> None:
    # json.loads('[[1' + '0' * 400 + ']]') gives such an int; min_cosine promises -1.
    assert min_cosine([[10**400, 1]], GOOD) == -1.0
