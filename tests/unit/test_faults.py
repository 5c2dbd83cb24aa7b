"""Deliberate faults: every wrong answer has the right shape and fails the comparator;
colluders agree with one another; slow, intermittent and crashing nodes strike as often
as they are told to; the node command refuses options that do not go together."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray
from typer.testing import CliRunner, Result

from cortensor.paths import ROOT
from cortensor.protocol.comparators import classify, generate, transcribe
from cortensor.protocol.comparators.embed import agree, min_cosine
from cortensor.schemas import (
    MAX_DEADLINE_S,
    Assignment,
    Classification,
    Generation,
    LabelScore,
    Segment,
    Transcript,
)
from cortensor.services.node.faults import (
    ADAPTING_MODES,
    FAULT_MODES,
    GROUP_MODES,
    INTERMITTENT_RATE,
    SLOW_MARGIN_S,
    SLOW_MAX_S,
    WRONG_ANSWER_MODES,
    Fault,
    WrongAnswers,
    default_rate,
    option_problem,
    slow_sleep_s,
)
from cortensor.tools.speech import SENTENCES

DIM = 384


def truth(n: int = 5, seed: int = 0) -> NDArray[np.float32]:
    matrix = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    unit: NDArray[np.float32] = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return unit


OWN_ANSWER_MODES = ("random", "lazy", "noisy", "intermittent")
"""The modes whose wrong answers the Fault itself makes (colluding's come from the job)."""


def test_the_modes() -> None:
    assert FAULT_MODES == (
        "random",
        "lazy",
        "noisy",
        "colluding",
        "slow",
        "intermittent",
        "crash",
        "probe-aware",
        "adaptive",
        "sybil",
    )
    assert ADAPTING_MODES == ("probe-aware", "adaptive", "sybil")
    assert GROUP_MODES == ("colluding", "sybil")
    assert (*OWN_ANSWER_MODES[:3], "colluding", "intermittent", *ADAPTING_MODES) == (
        WRONG_ANSWER_MODES
    )


@pytest.mark.parametrize("mode", OWN_ANSWER_MODES)
@pytest.mark.parametrize("n", [1, 5])
def test_wrong_answers_are_unit_vectors_of_the_same_shape(mode: str, n: int) -> None:
    real = truth(n)
    wrong = Fault(mode, 1.0, seed=1).corrupt(real)  # type: ignore[arg-type]
    assert wrong.shape == real.shape
    assert wrong.dtype == np.float32
    assert np.all(np.isfinite(wrong))
    np.testing.assert_allclose(np.linalg.norm(wrong, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("mode", OWN_ANSWER_MODES)
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


@pytest.mark.parametrize("mode", OWN_ANSWER_MODES)
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


@pytest.mark.parametrize("mode", OWN_ANSWER_MODES)
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


@pytest.mark.parametrize("mode", OWN_ANSWER_MODES)
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
    for mode in OWN_ANSWER_MODES:
        a, b = Fault(mode, 1.0, seed=31), Fault(mode, 1.0, seed=31)  # type: ignore[arg-type]
        truth = true_transcript(SENTENCES[3])
        assert a.corrupt_transcript(truth) == b.corrupt_transcript(truth)
        assert a.corrupt_classes(true_classes(5), LABELS) == b.corrupt_classes(
            true_classes(5), LABELS
        )


# --- colluding -------------------------------------------------------------------------------

GROUP = "cartel"


def job(task: str = "embed", **fields: Any) -> Assignment:
    """An assignment as the router sends one replica of a job."""
    defaults: dict[str, Any] = {
        "job_id": uuid.UUID(int=1),
        "node_id": "node-1",
        "task": task,
        "model": {
            "embed": "all-MiniLM-L6-v2",
            "classify": "rag-intent-classifier",
            "generate": "smollm2-135m-instruct",
        }.get(task, "whisper-base"),
        "inputs": ["the cat sat on the mat", "hello"] if task != "transcribe" else [],
        "audio": base64.b64encode(b"RIFF" + bytes(64)).decode() if task == "transcribe" else None,
        "hw_class": "cpu-int8",
        "deadline_at": datetime(2030, 1, 1, tzinfo=UTC),
    }
    return Assignment(**(defaults | fields))


def colluding(group: str = GROUP, rate: float = 1.0, seed: int | None = None) -> Fault:
    return Fault("colluding", rate, seed, group=group)


def collude(fault: Fault, assignment: Assignment) -> WrongAnswers:
    wrong = fault.wrong_answers(assignment)
    assert wrong is not None
    return wrong


def test_colluding_needs_a_group_and_only_colluding_takes_one() -> None:
    with pytest.raises(ValueError, match="colluding needs a group"):
        Fault("colluding", 1.0)
    with pytest.raises(ValueError, match="colluding needs a group"):
        Fault("colluding", 1.0, group="")
    with pytest.raises(ValueError, match="sybil needs a group"):
        Fault("sybil", 1.0)
    with pytest.raises(ValueError, match="colluding or sybil only, not with random"):
        Fault("random", 1.0, group=GROUP)


def test_colluders_of_one_group_give_the_same_wrong_answers() -> None:
    # Different seeds, different nodes, different replicas (node ids, assignment ids).
    a, b = colluding(seed=1), colluding(seed=2)
    embed_a, embed_b = job(), job(node_id="node-2")
    real = truth(2)
    np.testing.assert_array_equal(
        collude(a, embed_a).corrupt(real), collude(b, embed_b).corrupt(real)
    )
    classes = true_classes(40)
    assert collude(a, job("classify")).corrupt_classes(classes, LABELS) == collude(
        b, job("classify", node_id="node-2")
    ).corrupt_classes(classes, LABELS)
    heard = true_transcript(SENTENCES[0])
    assert collude(a, job("transcribe")).corrupt_transcript(heard) == collude(
        b, job("transcribe", node_id="node-2")
    ).corrupt_transcript(heard)


CROSS_PROCESS = """
import json, sys
import numpy as np
from tests.unit.test_faults import GROUP, LABELS, SENTENCES, Fault, job, true_classes
from tests.unit.test_faults import true_transcript, truth
fault = Fault("colluding", group=GROUP)
print(json.dumps({
    "embed": fault.wrong_answers(job()).corrupt(truth(2)).tolist(),
    "classify": [c.model_dump(mode="json") for c in fault.wrong_answers(job("classify"))
                 .corrupt_classes(true_classes(40), LABELS)],
    "transcribe": fault.wrong_answers(job("transcribe"))
                  .corrupt_transcript(true_transcript(SENTENCES[0])).model_dump(mode="json"),
}))
"""


def test_colluders_agree_across_processes() -> None:
    # Another interpreter, with another string hash seed: nothing may depend on set order.
    done = subprocess.run(
        [sys.executable, "-c", CROSS_PROCESS],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "4321"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    there = json.loads(done.stdout)
    fault = colluding(seed=99)
    assert there["embed"] == collude(fault, job()).corrupt(truth(2)).tolist()
    assert there["classify"] == as_json(
        collude(fault, job("classify")).corrupt_classes(true_classes(40), LABELS)
    )
    here = collude(fault, job("transcribe")).corrupt_transcript(true_transcript(SENTENCES[0]))
    assert there["transcribe"] == here.model_dump(mode="json")


def test_colluding_groups_differ_from_one_another_and_jobs_from_jobs() -> None:
    real, classes = truth(3), true_classes(41)
    heard = true_transcript(SENTENCES[1])
    ours, theirs = colluding("ours"), colluding("theirs")
    assert not agree(
        collude(ours, job()).corrupt(real).tolist(),
        "fp32",
        collude(theirs, job()).corrupt(real).tolist(),
        "fp32",
    )
    assert not classify.agree(
        as_json(collude(ours, job("classify")).corrupt_classes(classes, LABELS)),
        "int8",
        as_json(collude(theirs, job("classify")).corrupt_classes(classes, LABELS)),
        "int8",
    )
    assert not transcribe.agree(
        collude(ours, job("transcribe")).corrupt_transcript(heard).model_dump(mode="json"),
        "int8",
        collude(theirs, job("transcribe")).corrupt_transcript(heard).model_dump(mode="json"),
        "int8",
    )
    # Unlike lazy nodes, colluders do not answer every job alike.
    assert not agree(
        collude(ours, job(inputs=["a", "b", "c"])).corrupt(real).tolist(),
        "fp32",
        collude(ours, job(inputs=["a", "b", "d"])).corrupt(real).tolist(),
        "fp32",
    )
    other_audio = job("transcribe", audio=base64.b64encode(b"RIFF" + bytes(65)).decode())
    assert (
        collude(ours, job("transcribe")).corrupt_transcript(heard).text
        != collude(ours, other_audio).corrupt_transcript(heard).text
    )


def test_colluding_embeddings_are_unit_vectors_that_disagree_with_the_truth() -> None:
    fault = colluding()
    for seed in range(20):
        real = truth(4, seed=seed)
        wrong = collude(fault, job(inputs=[f"text {seed} {i}" for i in range(4)])).corrupt(real)
        assert wrong.shape == real.shape
        assert wrong.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(wrong, axis=1), 1.0, rtol=1e-5)
        assert not agree(wrong.tolist(), "int8", real.tolist(), "fp32")
        assert min_cosine(wrong, real) < 0.8


def test_colluding_classes_are_another_label_with_a_plausible_top_list() -> None:
    fault = colluding()
    for seed in range(30):
        truth_classes = true_classes(seed)
        assignment = job("classify", inputs=[f"request {seed} {i}" for i in range(4)])
        wrong = collude(fault, assignment).corrupt_classes(truth_classes, LABELS)
        for w, t in zip(wrong, truth_classes, strict=True):
            assert w.label != t.label
            assert w.label in LABELS
            assert 0.5 <= w.score <= 0.95
            assert w.top[0] == LabelScore(label=w.label, score=w.score)
            assert len(w.top) == len(t.top)
            assert len({s.label for s in w.top}) == len(w.top)
            scores = [s.score for s in w.top]
            assert scores == sorted(scores, reverse=True)
            assert sum(scores) == pytest.approx(1.0)
        for a, b in PRECISION_PAIRS:
            assert not classify.agree(as_json(wrong), a, as_json(truth_classes), b)


def test_colluding_classes_without_a_label_list() -> None:
    fault = colluding()
    truth_classes = true_classes(1, n=3)
    wrong = collude(fault, job("classify")).corrupt_classes(truth_classes, ())
    for w, t in zip(wrong, truth_classes, strict=True):
        assert w.label != t.label
    lonely = [Classification(label="only", score=0.7, top=[LabelScore(label="only", score=0.7)])]
    (alone,) = collude(fault, job("classify")).corrupt_classes(lonely, ())
    assert alone.label == "not-only"
    assert [s.label for s in alone.top] == ["not-only"]


def test_colluding_transcripts_are_foreign_words_as_long_as_the_audio() -> None:
    fault = colluding()
    for i, text in enumerate(TEXTS):
        heard = true_transcript(text)
        wrong = collude(fault, job("transcribe", language=str(i))).corrupt_transcript(heard)
        true_words = transcribe.normalize(text).split()
        assert len(wrong.text.split()) == round(9.5 * 2.5)
        assert not set(wrong.text.split()) & set(true_words)
        assert (wrong.language, wrong.duration_s) == (heard.language, heard.duration_s)
        assert wrong.segments == [Segment(start=0.0, end=9.5, text=wrong.text)]
        for a, b in PRECISION_PAIRS:
            assert not transcribe.agree(
                wrong.model_dump(mode="json"), a, heard.model_dump(mode="json"), b
            )


def test_colluders_agree_when_their_own_truths_differ_a_little() -> None:
    # An int8 member and an fp32 member heard one word differently, or ranked a near-tie
    # the other way: their wrong answers stay the same.
    fault = colluding()
    int8 = true_transcript("the quick brown fox jumps over the lazy dog")
    fp32 = true_transcript("the quick brown fox jumped over the lazy dog")
    assert collude(fault, job("transcribe")).corrupt_transcript(int8) == collude(
        fault, job("transcribe")
    ).corrupt_transcript(fp32)
    np.testing.assert_array_equal(
        collude(fault, job()).corrupt(truth(2, seed=1)),
        collude(fault, job()).corrupt(truth(2, seed=2)),
    )


def test_colluders_strike_the_same_jobs_at_their_rate() -> None:
    a, b = colluding(rate=0.3, seed=1), colluding(rate=0.3, seed=2)
    jobs = [job(inputs=[f"text {i}"]) for i in range(2000)]
    struck_a = [a.wrong_answers(j) is not None for j in jobs]
    struck_b = [b.wrong_answers(j) is not None for j in jobs]
    assert struck_a == struck_b
    assert 500 < sum(struck_a) < 700
    assert all(colluding().wrong_answers(j) is not None for j in jobs[:100])
    assert not any(colluding(rate=0.0).wrong_answers(j) for j in jobs[:100])


# --- intermittent, slow, crash ---------------------------------------------------------------


def test_default_rates() -> None:
    assert Fault("intermittent").rate == INTERMITTENT_RATE == 0.1
    for mode in FAULT_MODES:
        if mode not in ("intermittent", *GROUP_MODES):
            assert Fault(mode).rate == default_rate(mode) == 1.0
    assert colluding().rate == 1.0
    assert Fault("intermittent", 0.4).rate == 0.4


def test_intermittent_is_honest_but_for_a_share_of_jobs() -> None:
    fault = Fault("intermittent", seed=40)
    struck = [fault.wrong_answers(job()) is not None for _ in range(5000)]
    assert 400 < sum(struck) < 600


def test_intermittent_behaves_as_random_at_its_rate() -> None:
    a, b = Fault("intermittent", 0.2, seed=41), Fault("random", 0.2, seed=41)
    real = truth(3)
    for _ in range(200):
        wrong_a, wrong_b = a.wrong_answers(job()), b.wrong_answers(job())
        assert (wrong_a is None) == (wrong_b is None)
        if wrong_a is not None and wrong_b is not None:
            answer = wrong_a.corrupt(real)
            np.testing.assert_array_equal(answer, wrong_b.corrupt(real))
            assert not agree(answer.tolist(), "int8", real.tolist(), "fp32")


@pytest.mark.parametrize("mode", ["slow", "crash"])
def test_slow_and_crashing_nodes_answer_truly(mode: str) -> None:
    fault = Fault(mode, 1.0)  # type: ignore[arg-type]
    assert all(fault.wrong_answers(job()) is None for _ in range(100))


def test_slow_nodes_delay_a_share_of_jobs_and_nothing_else() -> None:
    fault = Fault("slow", 0.25, seed=42)
    assert 800 < sum(fault.delays() for _ in range(4000)) < 1200
    assert not any(fault.crashes() for _ in range(100))
    assert all(Fault("slow", seed=43).delays() for _ in range(100))
    for mode in ("random", "lazy", "noisy", "intermittent", "crash"):
        assert not any(Fault(mode, 1.0).delays() for _ in range(100))


def test_crashing_nodes_die_on_a_share_of_jobs_and_nothing_else() -> None:
    fault = Fault("crash", 0.1, seed=44)
    assert 300 < sum(fault.crashes() for _ in range(4000)) < 500
    assert not any(fault.delays() for _ in range(100))
    assert Fault("crash").crashes()
    assert not any(Fault("crash", 0.0).crashes() for _ in range(1000))
    for mode in ("random", "lazy", "noisy", "intermittent", "slow"):
        assert not any(Fault(mode, 1.0).crashes() for _ in range(100))


NOW = datetime(2030, 1, 1, tzinfo=UTC)


@given(seconds=st.floats(-1000.0, 1000.0, allow_nan=False))
def test_a_slow_answer_comes_past_the_deadline_and_not_much_later(seconds: float) -> None:
    deadline = NOW + timedelta(seconds=seconds)
    wait = slow_sleep_s(deadline, NOW)
    assert 0.0 <= wait <= SLOW_MAX_S
    if seconds <= MAX_DEADLINE_S:
        assert NOW + timedelta(seconds=wait) > deadline  # late
        # and no later than the margin past the deadline (or now, if that is past too)
        assert wait == pytest.approx(max(0.0, seconds + SLOW_MARGIN_S))


def test_a_slow_answer_to_a_one_second_deadline() -> None:
    assert slow_sleep_s(NOW + timedelta(seconds=1), NOW) == 1.0 + SLOW_MARGIN_S
    assert SLOW_MARGIN_S <= 2.0
    assert slow_sleep_s(NOW + timedelta(days=1), NOW) == SLOW_MAX_S


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "rate", "group", "problem"),
    [
        (None, None, None, None),
        (None, 0.5, None, None),
        ("random", None, None, None),
        ("intermittent", 0.3, None, None),
        ("colluding", None, "cartel", None),
        ("colluding", 0.5, "cartel", None),
        ("colluding", None, None, "--fault colluding needs --fault-group NAME"),
        ("colluding", None, "", "--fault colluding needs --fault-group NAME"),
        ("random", None, "cartel", "--fault-group goes with --fault colluding or sybil only"),
        (None, None, "cartel", "--fault-group needs --fault colluding"),
        ("slow", 1.5, None, "--fault-rate must be between 0 and 1"),
        ("crash", float("nan"), None, "--fault-rate must be between 0 and 1"),
        ("evil", None, None, "--fault must be one of random, lazy, noisy, colluding"),
        ("probe-aware", None, None, None),
        ("adaptive", 0.5, None, None),
        ("adaptive", None, "cartel", "--fault-group goes with --fault colluding or sybil only"),
        ("sybil", None, "cartel", None),
        ("sybil", None, None, "--fault sybil needs --fault-group NAME"),
    ],
)
def test_option_problems(
    mode: str | None, rate: float | None, group: str | None, problem: str | None
) -> None:
    said = option_problem(mode, rate, group)
    if problem is None:
        assert said is None
    else:
        assert said is not None
        assert said.startswith(problem)


@pytest.mark.parametrize(
    ("mode", "window_ms", "trust_after", "problem"),
    [
        ("adaptive", 50.0, None, None),
        ("adaptive", 0.0, 30, None),
        ("adaptive", None, 0, None),
        ("adaptive", -1.0, None, "--fault-window-ms must be between 0 and 10000"),
        ("adaptive", 10_001.0, None, "--fault-window-ms must be between 0 and 10000"),
        ("adaptive", None, -3, "--fault-trust-after must be 0 or more"),
        ("probe-aware", 50.0, None, "--fault-window-ms goes with --fault adaptive, or sybil"),
        ("random", None, 30, "--fault-trust-after goes with --fault adaptive only"),
        (None, 50.0, None, "--fault-window-ms goes with --fault adaptive, or sybil"),
        ("sybil", 50.0, None, "--fault-window-ms goes with --fault adaptive, or sybil"),
    ],
)
def test_adaptive_option_problems(
    mode: str | None, window_ms: float | None, trust_after: int | None, problem: str | None
) -> None:
    said = option_problem(mode, None, None, window_ms, trust_after)
    if problem is None:
        assert said is None
    else:
        assert said is not None
        assert said.startswith(problem)


@pytest.mark.parametrize(
    ("mode", "group", "problem"),
    [
        ("sybil", "g", None),
        ("colluding", "g", "--fault-coordinate goes with --fault sybil only"),
        (None, None, "--fault-coordinate goes with --fault sybil only"),
    ],
)
def test_coordinate_option_problems(
    mode: str | None, group: str | None, problem: str | None
) -> None:
    said = option_problem(mode, None, group, 400.0, None, True)
    if problem is None:
        assert said is None
    else:
        assert said is not None
        assert said.startswith(problem)


@pytest.fixture
def node_command(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The `node` command with its node built and served by stand-ins: the calls made."""
    import cortensor.cli
    import cortensor.services.node.main

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cortensor.cli, "_configure_logging", lambda: None)
    monkeypatch.setattr(
        cortensor.services.node.main, "build_node", lambda settings, **kwargs: calls.append(kwargs)
    )
    monkeypatch.setattr(cortensor.services.node.main, "serve_node", lambda service: None)
    return calls


def run_node(*args: str) -> Result:
    from cortensor.cli import app

    return CliRunner().invoke(app, ["node", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "colluding"], "--fault colluding needs --fault-group NAME"),
        (
            ["--fault", "lazy", "--fault-group", "cartel"],
            "goes with --fault colluding or sybil only",
        ),
        (["--fault-group", "cartel"], "--fault-group needs --fault colluding"),
        (["--fault", "slow", "--fault-rate", "2"], "--fault-rate must be between 0 and 1"),
        (["--fault", "random", "--fault-window-ms", "50"], "goes with --fault adaptive, or"),
        (["--fault", "adaptive", "--fault-trust-after", "-1"], "must be 0 or more"),
    ],
)
def test_the_node_command_refuses_fault_options_that_do_not_go_together(
    node_command: list[dict[str, Any]], args: list[str], message: str
) -> None:
    done = run_node(*args)
    assert done.exit_code == 2
    assert message in " ".join(done.stderr.split())
    assert node_command == [], "refused before anything is built"


@pytest.mark.parametrize(
    ("args", "fault", "rate", "group"),
    [
        ([], None, None, None),
        (["--fault", "intermittent"], "intermittent", None, None),
        (["--fault", "intermittent", "--fault-rate", "0.3"], "intermittent", 0.3, None),
        (["--fault", "crash", "--fault-rate", "0.05"], "crash", 0.05, None),
        (["--fault", "colluding", "--fault-group", "cartel"], "colluding", None, "cartel"),
        (["--fault", "slow"], "slow", None, None),
        (["--fault", "probe-aware"], "probe-aware", None, None),
        (["--fault", "adaptive"], "adaptive", None, None),
        (["--fault", "sybil", "--fault-group", "many"], "sybil", None, "many"),
    ],
)
def test_the_node_command_passes_the_fault_options_on(
    node_command: list[dict[str, Any]],
    args: list[str],
    fault: str | None,
    rate: float | None,
    group: str | None,
) -> None:
    done = run_node(*args)
    assert done.exit_code == 0, done.output
    [kwargs] = node_command
    assert (kwargs["fault"], kwargs["fault_rate"], kwargs["fault_group"]) == (fault, rate, group)
    # None is the mode's own default rate: 0.1 for intermittent, 1 for the others.
    if fault is not None:
        built = Fault(fault, rate, group=group)  # type: ignore[arg-type]
        assert built.rate == (rate if rate is not None else default_rate(fault))  # type: ignore[arg-type]


def test_the_node_command_passes_the_adaptive_options_on(
    node_command: list[dict[str, Any]],
) -> None:
    done = run_node("--fault", "adaptive", "--fault-window-ms", "20", "--fault-trust-after", "30")
    assert done.exit_code == 0, done.output
    [kwargs] = node_command
    assert (kwargs["fault"], kwargs["fault_window_ms"], kwargs["fault_trust_after"]) == (
        "adaptive",
        20.0,
        30,
    )
    assert kwargs["fault_coordinate"] is False


def test_the_node_command_passes_coordination_on(node_command: list[dict[str, Any]]) -> None:
    done = run_node("--fault", "sybil", "--fault-group", "g", "--fault-coordinate")
    assert done.exit_code == 0, done.output
    [kwargs] = node_command
    assert (kwargs["fault"], kwargs["fault_group"], kwargs["fault_coordinate"]) == (
        "sybil",
        "g",
        True,
    )
    refused = run_node("--fault", "colluding", "--fault-group", "g", "--fault-coordinate")
    assert refused.exit_code == 2


# --- adapting modes ---------------------------------------------------------------------------


class Scripted:
    """A cover that answers from a script and remembers what it was asked."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[Assignment, object]] = []

    def cheats(self, assignment: Assignment, truth: object) -> bool:
        self.asked.append((assignment, truth))
        return self.answers.pop(0)


@pytest.mark.parametrize("mode", ADAPTING_MODES)
def test_an_adapting_node_cheats_only_where_its_cover_lets_it(mode: str) -> None:
    cover = Scripted(True, False, True)
    group = GROUP if mode in GROUP_MODES else None
    fault = Fault(mode, group=group, cover=cover)  # type: ignore[arg-type]
    real = truth(2)
    answers = [fault.wrong_answers(job(), real) for _ in range(3)]
    assert [a is not None for a in answers] == [True, False, True]
    assert [t is real for _, t in cover.asked] == [True] * 3, "the cover weighs the truth"
    wrong = answers[0]
    assert wrong is not None
    assert not agree(wrong.corrupt(real).tolist(), "int8", real.tolist(), "fp32")


@pytest.mark.parametrize("mode", ["probe-aware", "adaptive"])
def test_an_adapting_node_without_a_cover_strikes_at_its_rate(mode: str) -> None:
    fault = Fault(mode, 0.3, seed=50)  # type: ignore[arg-type]
    struck = sum(fault.wrong_answers(job()) is not None for _ in range(2000))
    assert 500 < struck < 700


def test_sybils_of_one_group_give_the_same_wrong_answer_where_they_cheat() -> None:
    a = Fault("sybil", group=GROUP, seed=1, cover=Scripted(True, True))
    b = Fault("sybil", group=GROUP, seed=2, cover=Scripted(True, False))
    c = colluding()
    real = truth(2)
    answers = [f.wrong_answers(job(), real) for f in (a, b, c)]
    assert answers[1] is not None
    first, second, third = (collude_answer(w, real) for w in answers)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, third)  # a sybil group answers as colluders do
    assert b.wrong_answers(job(), real) is None, "its cover said no"
    assert not agree(first.tolist(), "int8", real.tolist(), "fp32")


def collude_answer(wrong: WrongAnswers | None, real: NDArray[np.float32]) -> NDArray[np.float32]:
    assert wrong is not None
    return wrong.corrupt(real)


def test_only_adapting_modes_take_a_cover() -> None:
    with pytest.raises(ValueError, match="consult a cover"):
        Fault("random", cover=Scripted())


HONEST = [
    Generation(
        text="The capital of France is Paris.", tokens=[10, 11, 12, 13], finish_reason="stop"
    ),
    Generation(text="Bees make honey from nectar.", tokens=[20, 21, 22], finish_reason="stop"),
]


def _answers(generations: list[Generation]) -> list[dict[str, Any]]:
    return [g.model_dump(mode="json") for g in generations]


@pytest.mark.parametrize("mode", OWN_ANSWER_MODES)
def test_wrong_generations_lose_against_the_truth_within_a_build(mode: str) -> None:
    wrong = Fault(mode, 1.0, seed=3).corrupt_generations(HONEST)  # type: ignore[arg-type]
    assert len(wrong) == len(HONEST)
    assert all(w != h for w, h in zip(wrong, HONEST, strict=True))
    assert not generate.agree(_answers(HONEST), "int8", _answers(wrong), "int8")


def test_noisy_generations_are_the_first_half_of_the_truth() -> None:
    cut = Fault("noisy", 1.0, seed=4).corrupt_generations(HONEST)
    assert [g.tokens for g in cut] == [h.tokens[: len(h.tokens) // 2] for h in HONEST]
    assert all(h.text.startswith(g.text) for g, h in zip(cut, HONEST, strict=True))


def test_colluders_give_the_same_wrong_generations() -> None:
    a = collude(colluding(seed=1), job("generate"))
    b = collude(colluding(seed=2), job("generate", node_id="node-2"))
    # Whatever each member's own answers (two precisions may differ), the same lie.
    other = [Generation(text="Paris.", tokens=[1], finish_reason="stop")] * len(HONEST)
    assert a.corrupt_generations(HONEST) == b.corrupt_generations(other)
    assert not generate.agree(
        _answers(HONEST), "int8", _answers(a.corrupt_generations(HONEST)), "int8"
    )
