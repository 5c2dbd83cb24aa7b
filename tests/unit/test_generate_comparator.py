"""The generate comparator: token for token within a build, by meaning across builds; and
what a generate job may ask.

Across builds the comparator asks a similarity function; here a bag-of-words cosine stands
in for the MiniLM one (tests/integration/test_generate_margins.py measures the real one on
the prepared models)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cortensor.protocol.comparators import COMPARATORS, generate
from cortensor.schemas import MAX_PROMPTS, JobRequest

agree = COMPARATORS["generate"]


def bag_cosine(a: str, b: str) -> float:
    x, y = Counter(re.findall(r"\w+", a.lower())), Counter(re.findall(r"\w+", b.lower()))
    dot = sum(x[w] * y[w] for w in x)
    norm = math.sqrt(sum(v * v for v in x.values()) * sum(v * v for v in y.values()))
    return dot / norm if norm else 0.0


@pytest.fixture(autouse=True)
def words_as_meaning() -> Iterator[None]:
    calls: list[tuple[str, str]] = []

    def similarity(a: str, b: str) -> float:
        calls.append((a, b))
        return bag_cosine(a, b)

    generate.use_similarity(lambda: similarity)
    yield
    generate.use_similarity(lambda: bag_cosine)


def answer(text: str, tokens: list[int] | None = None, finish: str = "stop") -> dict[str, Any]:
    return {
        "text": text,
        "tokens": list(range(len(text.split()))) if tokens is None else tokens,
        "finish_reason": finish,
    }


PARIS = answer("The capital of France is Paris.")


def test_one_build_agrees_only_token_for_token() -> None:
    assert agree([PARIS], "int8", [PARIS], "int8")
    other_tokens = answer(PARIS["text"], tokens=[9, 9, 9])
    assert not agree([PARIS], "int8", [other_tokens], "int8"), "same text, other tokens"
    other_text = answer("The capital of France is Lyon.", tokens=PARIS["tokens"])
    assert not agree([PARIS], "int8", [other_text], "int8"), "same tokens, other text"
    cut = answer(PARIS["text"], tokens=PARIS["tokens"], finish="length")
    assert not agree([PARIS], "fp32", [cut], "fp32"), "another end"


def test_precisions_agree_by_meaning_and_not_by_tokens() -> None:
    reworded = answer("The capital of France is Paris", tokens=[1, 2])
    assert agree([PARIS], "fp32", [reworded], "int8")
    assert agree([PARIS], "int8/int8-tok", [reworded], "fp32")
    unrelated = answer("Photosynthesis turns light into sugar in plants.")
    assert not agree([PARIS], "fp32", [unrelated], "int8")


def test_a_build_a_node_names_buys_no_looser_comparison() -> None:
    """The build is the node's own word: a cut answer under a made-up build still has to
    match the others of its precision token for token."""
    cut = answer("The capital of France", tokens=PARIS["tokens"][:4])
    assert generate.close(PARIS["text"], cut["text"]), "close enough in meaning"
    for label in ("int8/int8-avx2", "int8/made-up", "int8"):
        assert not agree([PARIS], "int8/int8-tok", [cut], label), label
        assert agree([PARIS], "int8/int8-tok", [PARIS], label), label


def test_an_empty_answer_agrees_only_with_an_empty_one() -> None:
    empty = answer("", tokens=[])
    assert not agree([PARIS], "fp32", [empty], "int8")
    assert agree([empty], "fp32", [empty], "int8")


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"text": "x"},
        [{"text": 1, "tokens": [], "finish_reason": "stop"}],
        [{"text": "x", "tokens": ["1"], "finish_reason": "stop"}],
        [{"text": "x", "tokens": [True], "finish_reason": "stop"}],
        [{"text": "x", "tokens": [], "finish_reason": "tired"}],
        ["x"],
    ],
)
def test_what_is_not_a_generation_agrees_with_nothing(bad: Any) -> None:
    assert not agree(bad, "int8", [PARIS], "int8")
    assert not agree([PARIS], "fp32", bad, "int8")


def test_every_answer_of_a_job_must_agree() -> None:
    second = answer("Water boils at 100 degrees Celsius at sea level.")
    wrong = answer("Bananas are yellow.")
    assert agree([PARIS, second], "fp32", [PARIS, second], "int8")
    assert not agree([PARIS, second], "fp32", [PARIS, wrong], "int8")
    assert not agree([PARIS, second], "fp32", [PARIS], "int8"), "an answer missing"


def test_a_judge_without_an_embedder_says_so() -> None:
    generate.use_similarity(lambda: (_ for _ in ()).throw(RuntimeError("no models")))
    with pytest.raises(RuntimeError, match="no models"):
        agree([PARIS], "fp32", [answer("Paris.")], "int8")
    # Within one build no embedding is needed.
    assert agree([PARIS], "fp32", [PARIS], "fp32")


texts = st.text(min_size=1, max_size=80)


@given(texts, st.lists(st.integers(0, 50_000), max_size=20))
def test_an_answer_agrees_with_itself_in_any_build(text: str, tokens: list[int]) -> None:
    one = [answer(text, tokens)]
    assert agree(one, "int8", one, "int8")
    assert agree(one, "fp32", one, "int8")


@given(texts, texts)
def test_agreement_is_symmetric(a: str, b: str) -> None:
    x, y = [answer(a)], [answer(b)]
    assert agree(x, "fp32", y, "int8") == agree(y, "int8", x, "fp32")
    assert agree(x, "int8", y, "int8") == agree(y, "int8", x, "int8")


def test_a_generate_job_takes_prompts_or_one_conversation() -> None:
    assert JobRequest(task="generate", inputs=["Hi"]).max_tokens == 128
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert JobRequest(task="generate", messages=chat).messages is not None
    refused = {
        "nothing to answer": {},
        "both": {"inputs": ["Hi"], "messages": chat},
        "ends with the assistant": {"messages": [*chat, {"role": "assistant", "content": "x"}]},
        "unknown role": {"messages": [{"role": "tool", "content": "x"}]},
        "too many tokens": {"inputs": ["Hi"], "max_tokens": 100_000},
        "no tokens": {"inputs": ["Hi"], "max_tokens": 0},
        "too many prompts": {"inputs": ["Hi"] * (MAX_PROMPTS + 1)},
        "blank prompt": {"inputs": [" "]},
        "tokens as text": {"inputs": ["Hi"], "max_tokens": "5"},
    }
    accepted = []
    for why, fields in refused.items():
        try:
            JobRequest.model_validate({"task": "generate", **fields})
            accepted.append(why)
        except ValidationError:
            pass
    assert accepted == []
    with pytest.raises(ValidationError, match="messages are for generate"):
        JobRequest(task="embed", inputs=["Hi"], messages=chat)
