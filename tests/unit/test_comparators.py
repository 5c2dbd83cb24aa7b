"""The embedding comparator: when two replicas' vectors are the same answer."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from cortensor.catalog import TASKS
from cortensor.protocol.comparators import COMPARATORS, classify, generate, transcribe
from cortensor.protocol.comparators.embed import (
    BETWEEN_BUILDS,
    THRESHOLDS,
    agree,
    as_matrix,
    min_cosine,
    threshold,
)
from cortensor.protocol.comparators.precision import pair

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
    | st.just(10**400)
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


# --- classify: the same top label with a close score ------------------------------------


def classification(label: str, score: float, *others: tuple[str, float]) -> dict[str, Any]:
    top = [{"label": label, "score": score}] + [{"label": n, "score": s} for n, s in others]
    return {"label": label, "score": score, "top": top}


CLASSES = [
    classification("greeting", 0.91, ("farewell", 0.05), ("thanks", 0.02)),
    classification("book_flight", 0.55, ("book_hotel", 0.30), ("cancel", 0.10)),
]


def with_scores(output: list[dict[str, Any]], *deltas: float) -> list[dict[str, Any]]:
    """The output with each item's top-1 score moved by its delta (also in its top list)."""
    moved = []
    for item, delta in zip(output, deltas, strict=True):
        score = item["score"] + delta
        top = [{**item["top"][0], "score": score}, *item["top"][1:]]
        moved.append({**item, "score": score, "top": top})
    return moved


def test_every_task_has_its_comparator() -> None:
    assert COMPARATORS["classify"] is classify.agree
    assert COMPARATORS["transcribe"] is transcribe.agree
    assert COMPARATORS["generate"] is generate.agree
    assert set(COMPARATORS) == set(TASKS)


@pytest.mark.parametrize("a", PRECISIONS)
@pytest.mark.parametrize("b", PRECISIONS)
def test_identical_classifications_agree_for_every_precision_pair(a: str, b: str) -> None:
    assert classify.agree(CLASSES, a, CLASSES, b)


def test_classify_tolerances() -> None:
    for a in PRECISIONS:
        for b in PRECISIONS:
            assert classify.tolerance(a, b) == classify.tolerance(b, a)
    assert classify.tolerance("fp32", "fp32") == 0.02
    assert classify.tolerance("fp16", "fp16") == 0.02
    assert classify.tolerance("fp32", "fp16") == 0.02
    for other in PRECISIONS:
        assert classify.tolerance("int8", other) == 0.15
    assert classify.tolerance("fp32", "bf16") == 0.15  # unknown: the loosest
    assert classify.TOLERANCES[frozenset({"fp32"})] == 0.02


@pytest.mark.parametrize(
    ("a", "b", "delta", "expected"),
    [
        ("fp32", "fp32", 0.0, True),
        ("fp32", "fp32", 0.019, True),
        ("fp32", "fp32", 0.02, True),  # the boundary is inclusive, despite float rounding
        ("fp32", "fp32", -0.02, True),
        ("fp32", "fp32", 0.03, False),
        ("fp32", "fp16", 0.015, True),
        ("fp16", "fp32", -0.025, False),
        ("fp32", "int8", 0.08, True),
        ("int8", "fp32", -0.10, True),
        ("int8", "int8", 0.09, True),
        ("fp16", "int8", 0.14, True),  # measured up to 0.130 on short requests
        ("fp16", "int8", 0.16, False),
        ("int8", "int8", -0.3, False),  # a noisy fault's shift
    ],
)
def test_classify_score_tolerance_per_precision_pair(
    a: str, b: str, delta: float, expected: bool
) -> None:
    moved = with_scores(CLASSES, 0.0, delta)
    assert classify.agree(CLASSES, a, moved, b) is expected
    assert classify.agree(moved, b, CLASSES, a) is expected


def test_another_top_label_disagrees_even_with_the_same_score() -> None:
    other = [CLASSES[0], classification("book_hotel", 0.55, ("book_flight", 0.30))]
    assert not classify.agree(CLASSES, "int8", other, "int8")


def test_only_the_top_label_and_its_score_are_compared() -> None:
    # The rest of the top-k list may differ (order of near-zero labels, k itself).
    other = [
        classification("greeting", 0.91, ("thanks", 0.04)),
        classification("book_flight", 0.56),
    ]
    assert classify.agree(CLASSES, "fp32", other, "fp32")


@pytest.mark.parametrize("other", [CLASSES[:1], [*CLASSES, CLASSES[0]], []])
def test_a_different_number_of_classifications_disagrees(other: list[dict[str, Any]]) -> None:
    assert not classify.agree(CLASSES, "fp32", other, "fp32")
    assert not classify.agree(other, "fp32", CLASSES, "fp32")


GOOD_ITEM = classification("greeting", 0.9)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(None, id="none"),
        pytest.param(GOOD_ITEM, id="item-not-in-a-list"),
        pytest.param("greeting", id="text"),
        pytest.param([], id="empty"),
        pytest.param([None], id="null-item"),
        pytest.param([["greeting", 0.9]], id="pair"),
        pytest.param([{"score": 0.9, "top": []}], id="no-label"),
        pytest.param([{"label": "greeting", "top": []}], id="no-score"),
        pytest.param([{"label": "greeting", "score": 0.9}], id="no-top"),
        pytest.param([{**GOOD_ITEM, "top": "greeting"}], id="top-not-a-list"),
        pytest.param([{**GOOD_ITEM, "top": [{"label": "x"}]}], id="top-entry-no-score"),
        pytest.param([{**GOOD_ITEM, "top": [{"label": 3, "score": 0.1}]}], id="top-label-int"),
        pytest.param([{**GOOD_ITEM, "top": [None]}], id="top-entry-null"),
        pytest.param([{**GOOD_ITEM, "score": math.nan}], id="nan"),
        pytest.param([{**GOOD_ITEM, "score": math.inf}], id="inf"),
        pytest.param([{**GOOD_ITEM, "score": 1.5}], id="above-one"),
        pytest.param([{**GOOD_ITEM, "score": -0.1}], id="negative"),
        pytest.param([{**GOOD_ITEM, "score": True}], id="bool-score"),
        pytest.param([{**GOOD_ITEM, "score": "0.9"}], id="text-score"),
        pytest.param([{**GOOD_ITEM, "score": 10**400}], id="huge-int-score"),
        pytest.param([{**GOOD_ITEM, "top": [{"label": "x", "score": -(10**400)}]}], id="huge-int"),
        pytest.param([{**GOOD_ITEM, "label": None}], id="null-label"),
        pytest.param([{**GOOD_ITEM, "label": ["greeting"]}], id="list-label"),
    ],
)
def test_malformed_classifications_disagree_and_never_raise(bad: Any) -> None:
    assert classify.top_labels(bad) is None
    for p in PRECISIONS:
        assert not classify.agree([GOOD_ITEM], p, bad, p)
        assert not classify.agree(bad, p, [GOOD_ITEM], p)
        assert not classify.agree(bad, p, bad, p)


@given(a=_JSON, b=_JSON)
def test_classify_never_raises_on_json_like_garbage(a: Any, b: Any) -> None:
    assert isinstance(classify.agree(a, "fp32", b, "int8"), bool)
    assert isinstance(classify.agree([a], "fp32", [b], "fp32"), bool)


_SCORE = st.floats(0.0, 1.0)
_LABEL = st.sampled_from(["greeting", "farewell", "thanks", "book_flight", "cancel"])
_CLASSIFICATION = st.builds(
    lambda label, score, rest: classification(label, score, *rest),
    _LABEL,
    _SCORE,
    st.lists(st.tuples(_LABEL, _SCORE), max_size=4),
)
_CLASSES = st.lists(_CLASSIFICATION, min_size=1, max_size=6)


@given(_CLASSES, st.sampled_from(PRECISIONS), st.sampled_from(PRECISIONS))
def test_any_classification_agrees_with_itself(
    output: list[dict[str, Any]], a: str, b: str
) -> None:
    assert classify.agree(output, a, output, b)


@given(_CLASSES, _CLASSES, st.sampled_from(PRECISIONS), st.sampled_from(PRECISIONS))
def test_classify_agreement_is_symmetric(
    x: list[dict[str, Any]], y: list[dict[str, Any]], a: str, b: str
) -> None:
    assert classify.agree(x, a, y, b) == classify.agree(y, b, x, a)


# --- transcribe: word error rate after normalization ------------------------------------


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Hello, World!", "hello world"),
        ("  The   quick\tbrown\nfox. ", "the quick brown fox"),
        ("Don't stop — it's twenty-one.", "dont stop its twenty one"),
        ("I’m here", "im here"),
        ("He paid $5 (50%) in 2024.", "he paid 5 50 in 2024"),
        ("Straße ÉCOLE", "strasse école"),
        ("...", ""),
        ("", ""),
    ],
)
def test_normalize(text: str, normal: str) -> None:
    assert transcribe.normalize(text) == normal


@pytest.mark.parametrize(
    ("reference", "hypothesis", "rate"),
    [
        ("", "", 0.0),
        ("...", " ", 0.0),
        ("", "something", 1.0),
        ("something said", "", 1.0),
        ("The cat sat.", "the cat sat", 0.0),
        ("the cat sat on the mat", "the cat sat on a mat", 1 / 6),
        ("the cat sat", "the cat", 1 / 3),
        ("the cat", "the cat sat", 1 / 2),
        ("one two three four", "five six seven eight", 1.0),
    ],
)
def test_word_error_rate(reference: str, hypothesis: str, rate: float) -> None:
    assert transcribe.word_error_rate(reference, hypothesis) == pytest.approx(rate)


def test_transcribe_thresholds() -> None:
    for a in PRECISIONS:
        for b in PRECISIONS:
            assert transcribe.threshold(a, b) == transcribe.threshold(b, a)
            assert transcribe.threshold(a, b) == (0.10 if a == b else 0.20)
    assert transcribe.threshold("fp32", "bf16") == 0.20


FORTY_WORDS = [
    word
    for line in (
        "the quick brown fox jumps over the lazy dog while she sells sea shells",
        "by the sea shore and a gentle breeze moves the leaves across the empty",
        "garden as we walk along the river until the sun goes down",
    )
    for word in line.split()
]


def transcript_of(words: list[str], **fields: Any) -> dict[str, Any]:
    text = " ".join(words)
    output: dict[str, Any] = {
        "text": text,
        "language": "en",
        "duration_s": 12.5,
        "segments": [{"start": 0.0, "end": 12.5, "text": text}],
    }
    return {**output, **fields}


def changed(words: list[str], n: int) -> list[str]:
    """`n` of the words replaced, spread out."""
    out = list(words)
    for i in range(n):
        out[(i * 7) % len(out)] = f"other{i}"
    return out


@pytest.mark.parametrize(
    ("edits", "a", "b", "expected"),
    [
        (0, "fp32", "fp32", True),
        (2, "int8", "fp32", True),  # measured: base int8 vs float32 differ by 1-2 in 40
        (4, "fp32", "fp32", True),  # 0.10: the same-precision bound
        (5, "fp32", "fp32", False),
        (5, "int8", "int8", False),
        (5, "fp32", "int8", True),
        (8, "fp16", "int8", True),  # 0.20: the cross-precision bound
        (9, "fp32", "int8", False),
        (20, "fp32", "int8", False),
    ],
)
def test_transcript_word_error_threshold_per_precision_pair(
    edits: int, a: str, b: str, expected: bool
) -> None:
    assert len(FORTY_WORDS) == 40
    x, y = transcript_of(FORTY_WORDS), transcript_of(changed(FORTY_WORDS, edits))
    assert transcribe.agree(x, a, y, b) is expected
    assert transcribe.agree(y, b, x, a) is expected


def test_case_punctuation_and_segment_times_do_not_matter() -> None:
    text = "The quick brown fox, jumps over the lazy dog!"
    x = transcript_of(text.split())
    y = transcript_of(
        transcribe.normalize(text).split(),
        language="de",
        duration_s=12.0,
        segments=[{"start": 0.1, "end": 3.0, "text": "the quick"}],
    )
    assert transcribe.agree(x, "fp32", y, "fp32")


def test_wer_is_taken_in_the_stricter_direction() -> None:
    # Ten words against the same ten plus two: 2/10 one way, 2/12 the other.
    ten = FORTY_WORDS[:10]
    assert transcribe.symmetric_wer(" ".join(ten), " ".join([*ten, "and", "more"])) == 0.2
    assert not transcribe.agree(transcript_of(ten), "fp32", transcript_of([*ten, "a", "b"]), "fp32")
    assert transcribe.agree(transcript_of(ten), "fp32", transcript_of([*ten, "a"]), "fp32")


def test_integers_are_numbers_but_not_beyond_the_float_range() -> None:
    # json.loads gives ints for "12" and for 400 digits alike; neither may raise.
    assert transcribe.transcript_text({**GOOD_TRANSCRIPT, "duration_s": 12}) is not None
    huge = {**GOOD_TRANSCRIPT, "segments": [{"start": 0, "end": 10**400, "text": ""}]}
    assert transcribe.transcript_text(huge) is None
    assert not transcribe.agree(huge, "fp32", GOOD_TRANSCRIPT, "fp32")
    assert classify.top_labels([classification("greeting", 1)]) == [("greeting", 1.0)]


def test_empty_transcripts_agree_with_each_other_only() -> None:
    empty = transcript_of([], segments=[])
    assert transcribe.agree(empty, "fp32", empty, "int8")
    assert not transcribe.agree(empty, "fp32", transcript_of(["hello"]), "int8")


GOOD_TRANSCRIPT = transcript_of(FORTY_WORDS[:8])


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(None, id="none"),
        pytest.param("the quick brown fox", id="bare-text"),
        pytest.param([GOOD_TRANSCRIPT], id="list"),
        pytest.param({}, id="empty-dict"),
        pytest.param({**GOOD_TRANSCRIPT, "text": None}, id="null-text"),
        pytest.param({**GOOD_TRANSCRIPT, "text": ["the"]}, id="list-text"),
        pytest.param({k: v for k, v in GOOD_TRANSCRIPT.items() if k != "language"}, id="no-lang"),
        pytest.param({**GOOD_TRANSCRIPT, "language": 1}, id="int-language"),
        pytest.param({**GOOD_TRANSCRIPT, "duration_s": math.nan}, id="nan-duration"),
        pytest.param({**GOOD_TRANSCRIPT, "duration_s": "12"}, id="text-duration"),
        pytest.param({**GOOD_TRANSCRIPT, "duration_s": True}, id="bool-duration"),
        pytest.param({**GOOD_TRANSCRIPT, "segments": None}, id="null-segments"),
        pytest.param({**GOOD_TRANSCRIPT, "segments": [None]}, id="null-segment"),
        pytest.param(
            {**GOOD_TRANSCRIPT, "segments": [{"start": 0, "end": math.inf, "text": ""}]},
            id="inf-segment",
        ),
        pytest.param({**GOOD_TRANSCRIPT, "segments": [{"start": 0, "end": 1}]}, id="no-seg-text"),
        pytest.param({**GOOD_TRANSCRIPT, "duration_s": 1e400}, id="inf-duration"),
    ],
)
def test_malformed_transcripts_disagree_and_never_raise(bad: Any) -> None:
    assert transcribe.transcript_text(bad) is None
    for p in PRECISIONS:
        assert not transcribe.agree(GOOD_TRANSCRIPT, p, bad, p)
        assert not transcribe.agree(bad, p, GOOD_TRANSCRIPT, p)
        assert not transcribe.agree(bad, p, bad, p)


@given(a=_JSON, b=_JSON)
def test_transcribe_never_raises_on_json_like_garbage(a: Any, b: Any) -> None:
    assert isinstance(transcribe.agree(a, "fp32", b, "int8"), bool)
    wrapped_a = {**GOOD_TRANSCRIPT, "text": a}
    assert isinstance(transcribe.agree(wrapped_a, "fp32", GOOD_TRANSCRIPT, "fp32"), bool)


@given(st.text(max_size=200))
def test_normalize_is_idempotent_and_never_raises(text: str) -> None:
    once = transcribe.normalize(text)
    assert transcribe.normalize(once) == once
    assert once == once.strip()
    assert "  " not in once


_WORDS = st.lists(st.sampled_from(["a", "b", "cat", "Dog", "sat,", "on", "the", "mat."]))


@given(_WORDS, st.sampled_from(PRECISIONS), st.sampled_from(PRECISIONS))
def test_any_transcript_agrees_with_itself(words: list[str], a: str, b: str) -> None:
    output = transcript_of(words)
    assert transcribe.agree(output, a, output, b)


@given(_WORDS, _WORDS, st.sampled_from(PRECISIONS), st.sampled_from(PRECISIONS))
def test_transcribe_agreement_is_symmetric(x: list[str], y: list[str], a: str, b: str) -> None:
    assert transcribe.agree(transcript_of(x), a, transcript_of(y), b) == transcribe.agree(
        transcript_of(y), b, transcript_of(x), a
    )
    wer = transcribe.symmetric_wer(" ".join(x), " ".join(y))
    assert wer == transcribe.symmetric_wer(" ".join(y), " ".join(x))
    assert wer >= 0.0


# -- builds of one precision, and near-ties between precisions --------------------------


def test_precision_labels_name_the_precisions_and_whether_builds_differ() -> None:
    assert pair("int8", "int8") == (frozenset({"int8"}), False)
    assert pair("int8", "int8/int8-avx2") == (frozenset({"int8"}), True)
    assert pair("int8/int8-avx2", "int8/int8-avx2") == (frozenset({"int8"}), False)
    assert pair("fp32", "int8/int8-avx2") == (frozenset({"fp32", "int8"}), False)


def test_two_int8_builds_get_the_between_builds_threshold() -> None:
    assert threshold("int8", "int8") == 0.99
    assert threshold("int8", "int8/int8-avx2") == BETWEEN_BUILDS
    assert threshold("int8/int8-avx2", "int8/int8-avx2") == 0.99
    # The measured worst case between the VNNI and AVX2 graphs, cosine 0.952, agrees.
    a = np.array([[1.0, 0.0]])
    b = np.array([[0.952, math.sqrt(1 - 0.952**2)]])
    assert agree(a, "int8", b, "int8/int8-avx2")
    assert not agree(a, "int8", b, "int8")
    assert transcribe.threshold("int8", "int8/int8-cuda") == 0.20
    assert classify.tolerance("int8", "int8/int8-avx2") == 0.15


NEAR_TIE_A = [classification("book_flight", 0.36, ("book_hotel", 0.33), ("cancel", 0.10))]
NEAR_TIE_B = [classification("book_hotel", 0.35, ("book_flight", 0.34), ("cancel", 0.11))]


def test_a_near_tie_may_flip_between_precisions_but_not_within_one() -> None:
    assert classify.agree(NEAR_TIE_A, "fp32", NEAR_TIE_B, "int8")
    assert classify.agree(NEAR_TIE_B, "int8/int8-avx2", NEAR_TIE_A, "int8")
    assert not classify.agree(NEAR_TIE_A, "int8", NEAR_TIE_B, "int8")


def test_a_clear_winner_that_flips_disagrees_whatever_the_precisions() -> None:
    flipped = [classification("book_hotel", 0.55, ("book_flight", 0.30), ("cancel", 0.10))]
    assert not classify.agree([CLASSES[1]], "fp32", flipped, "int8")
    # A label the other output does not rank at all is no near-tie either.
    stranger = [classification("cancel", 0.36, ("greeting", 0.33))]
    assert not classify.agree(NEAR_TIE_A, "fp32", stranger, "int8")
