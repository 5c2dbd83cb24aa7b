"""Deliberate faults: every wrong answer has the right shape and fails the comparator."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from cortensor.comparators import classify, transcribe
from cortensor.comparators.embed import agree, min_cosine
from cortensor.node.faults import FAULT_MODES, Fault
from cortensor.schemas import Classification, LabelScore, Segment, Transcript
from cortensor.speech import SENTENCES

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


# --- classifications ---------------------------------------------------------------------

LABELS = tuple(f"intent_{i:03d}" for i in range(157))
PRECISION_PAIRS = [(a, b) for a in ("fp32", "fp16", "int8") for b in ("fp32", "fp16", "int8")]


def true_classes(seed: int, n: int = 4, k: int = 5) -> list[Classification]:
    """Plausible classifier output: labels other than the lazy constant, sorted scores."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        names = [LABELS[i] for i in rng.choice(np.arange(1, len(LABELS)), size=k, replace=False)]
        probs = sorted(rng.dirichlet(np.ones(k) * 0.5).tolist(), reverse=True)
        top = [LabelScore(label=a, score=p) for a, p in zip(names, probs, strict=True)]
        out.append(Classification(label=names[0], score=probs[0], top=top))
    return out


def as_json(classes: list[Classification]) -> list[dict[str, Any]]:
    return [c.model_dump(mode="json") for c in classes]


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_wrong_classes_are_valid_and_disagree_for_every_precision_pair(mode: str) -> None:
    fault = Fault(mode, 1.0, seed=20)  # type: ignore[arg-type]
    for seed in range(30):
        truth = true_classes(seed)
        wrong = fault.corrupt_classes(truth, LABELS)
        assert len(wrong) == len(truth)
        for w, t in zip(wrong, truth, strict=True):
            assert 0.0 <= w.score <= 1.0
            assert len(w.top) == len(t.top)
            assert w.top[0].label == w.label
        for a, b in PRECISION_PAIRS:
            assert not classify.agree(as_json(wrong), a, as_json(truth), b)


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_one_wrong_text_is_enough_to_disagree(mode: str) -> None:
    truth = true_classes(31, n=6)
    wrong = Fault(mode, 1.0, seed=21).corrupt_classes(truth[2:3], LABELS)  # type: ignore[arg-type]
    mixed = [*truth[:2], *wrong, *truth[3:]]
    assert not classify.agree(as_json(mixed), "int8", as_json(truth), "fp32")


def test_random_classes_never_name_the_true_label() -> None:
    fault = Fault("random", 1.0, seed=22)
    for seed in range(50):
        truth = true_classes(seed)
        for w, t in zip(fault.corrupt_classes(truth, LABELS), truth, strict=True):
            assert w.label != t.label
            assert w.label in LABELS
            assert len({s.label for s in w.top}) == len(w.top)


def test_random_classes_need_no_label_list() -> None:
    # A classifier without `labels`: the other labels come from the answers themselves,
    # and when there is only one, a label the model does not have.
    fault = Fault("random", 1.0, seed=23)
    truth = true_classes(1, n=3)
    for w, t in zip(fault.corrupt_classes(truth, ()), truth, strict=True):
        assert w.label != t.label
    lonely = [Classification(label="only", score=0.7, top=[LabelScore(label="only", score=0.7)])]
    (wrong,) = fault.corrupt_classes(lonely, ())
    assert wrong.label == "not-only"
    assert not classify.agree(as_json([wrong]), "fp32", as_json(lonely), "fp32")


def test_lazy_classes_are_the_first_label_at_certainty() -> None:
    fault = Fault("lazy", 1.0, seed=24)
    a = fault.corrupt_classes(true_classes(2), LABELS)
    b = fault.corrupt_classes(true_classes(3), LABELS)
    assert a == b
    assert {(c.label, c.score) for c in a} == {(LABELS[0], 1.0)}
    assert [s.label for s in a[0].top] == list(LABELS[:5])
    # Two lazy nodes agree with each other.
    assert classify.agree(as_json(a), "int8", as_json(b), "int8")
    (unknown,) = fault.corrupt_classes(true_classes(4, n=1), ())
    assert unknown.label == "unknown"


def test_a_lazy_answer_that_happens_to_be_the_truth_agrees() -> None:
    # Not a wrong answer: the constant was right. Only then does lazy agree.
    truth = [
        Classification(label=LABELS[0], score=0.99, top=[LabelScore(label=LABELS[0], score=0.99)])
    ]
    lazy = Fault("lazy", 1.0).corrupt_classes(truth, LABELS)
    assert classify.agree(as_json(lazy), "fp32", as_json(truth), "fp32")


@pytest.mark.parametrize("score", [0.0, 0.2, 0.5, 0.51, 0.8, 1.0])
def test_noisy_classes_keep_the_label_and_move_its_score_by_0_3(score: float) -> None:
    top = [LabelScore(label="a", score=score), LabelScore(label="b", score=0.0)]
    truth = [Classification(label="a", score=score, top=top)]
    (wrong,) = Fault("noisy", 1.0, seed=25).corrupt_classes(truth, ("a", "b"))
    assert wrong.label == "a"
    assert abs(wrong.score - score) == pytest.approx(0.3)
    assert 0.0 <= wrong.score <= 1.0
    assert wrong.top == [LabelScore(label="a", score=wrong.score), top[1]]
    for a, b in PRECISION_PAIRS:
        assert not classify.agree(as_json([wrong]), a, as_json(truth), b)


# --- transcripts ---------------------------------------------------------------------------


def true_transcript(text: str) -> Transcript:
    return Transcript(
        text=text,
        language="en",
        duration_s=9.5,
        segments=[Segment(start=0.0, end=9.5, text=text)],
    )


TEXTS = [
    *SENTENCES,
    " ".join(SENTENCES[:10]),
    "Yes.",
    "Zebra quartz violin glacier cactus lantern nebula walrus saffron tundra harpoon.",
    "a a a a a a a a b b",
    "",
]


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_wrong_transcripts_disagree_for_every_precision_pair(mode: str) -> None:
    fault = Fault(mode, 1.0, seed=26)  # type: ignore[arg-type]
    for text in TEXTS:
        truth = true_transcript(text)
        wrong = fault.corrupt_transcript(truth)
        assert (wrong.language, wrong.duration_s) == (truth.language, truth.duration_s)
        assert wrong.segments == [Segment(start=0.0, end=9.5, text=wrong.text)]
        for a, b in PRECISION_PAIRS:
            assert not transcribe.agree(
                wrong.model_dump(mode="json"), a, truth.model_dump(mode="json"), b
            ), (mode, text, wrong.text)


def test_random_transcripts_have_as_many_words_none_of_them_true() -> None:
    fault = Fault("random", 1.0, seed=27)
    for text in TEXTS:
        wrong = fault.corrupt_transcript(true_transcript(text))
        true_words = transcribe.normalize(text).split()
        words = wrong.text.split()
        assert len(words) == max(1, len(true_words))
        assert not set(words) & set(true_words)
        assert transcribe.word_error_rate(text, wrong.text) == 1.0


def test_random_transcripts_differ_between_calls() -> None:
    fault = Fault("random", 1.0, seed=28)
    truth = true_transcript(SENTENCES[0])
    assert fault.corrupt_transcript(truth).text != fault.corrupt_transcript(truth).text


def test_lazy_transcripts_are_a_constant() -> None:
    fault = Fault("lazy", 1.0, seed=29)
    texts = {fault.corrupt_transcript(true_transcript(t)).text for t in TEXTS}
    assert texts == {"the"}
    # Right by chance when the truth is that constant, and only then.
    assert transcribe.agree(
        fault.corrupt_transcript(true_transcript("The.")).model_dump(mode="json"),
        "fp32",
        true_transcript("The.").model_dump(mode="json"),
        "fp32",
    )


@given(
    words=st.lists(st.sampled_from(["a", "b", "the", "cat", "Zebra", "quartz", "x."]), max_size=60),
    seed=st.integers(0, 2**32),
)
def test_noisy_transcripts_have_a_word_error_rate_of_at_least_a_half(
    words: list[str], seed: int
) -> None:
    # Few distinct words, repeated, some from the fault's own vocabulary: the hard case.
    text = " ".join(words)
    wrong = Fault("noisy", 1.0, seed=seed).corrupt_transcript(true_transcript(text))
    assert transcribe.word_error_rate(text, wrong.text) >= 0.5
    assert transcribe.symmetric_wer(text, wrong.text) >= 0.5


def test_noisy_transcripts_keep_about_half_the_words() -> None:
    fault = Fault("noisy", 1.0, seed=30)
    text = " ".join(SENTENCES)
    truth = transcribe.normalize(text).split()
    wrong = fault.corrupt_transcript(true_transcript(text)).text.split()
    kept = [w for w in wrong if w in truth]
    assert len(kept) == len(truth) // 2
    assert 0.5 * len(truth) <= len(wrong) <= len(truth)


def test_same_seed_gives_the_same_wrong_classes_and_transcripts() -> None:
    for mode in FAULT_MODES:
        a, b = Fault(mode, 1.0, seed=31), Fault(mode, 1.0, seed=31)
        truth = true_transcript(SENTENCES[3])
        assert a.corrupt_transcript(truth) == b.corrupt_transcript(truth)
        assert a.corrupt_classes(true_classes(5), LABELS) == b.corrupt_classes(
            true_classes(5), LABELS
        )
