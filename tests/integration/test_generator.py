"""The language model's runtime on the prepared SmolLM2 variants: greedy, deterministic
answers that stop at the end of the turn or at max_tokens (real models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cortensor.catalog import EMBED_MODEL, GENERATE_MODEL
from cortensor.errors import BadInput
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.embedding import EmbeddingRuntime
from cortensor.inference.runtimes.generator import GeneratorRuntime
from cortensor.schemas import ChatTurn
from cortensor.tools.bench_generate import PROMPTS

pytestmark = [pytest.mark.models, pytest.mark.slow]

CAPITAL = [ChatTurn(role="user", content="What is the capital of France? Answer in one word.")]
STORY = [
    ChatTurn(role="system", content="You are a storyteller."),
    ChatTurn(role="user", content="Tell me a long story about a dragon."),
]


def _runtime(models_dir: Path, hw_class: str) -> GeneratorRuntime:
    variant = load_manifest(models_dir).variant_for(GENERATE_MODEL, hw_class)
    return GeneratorRuntime.from_manifest(models_dir, variant, threads=1)


@pytest.fixture(scope="module")
def fp32(models_dir: Path) -> GeneratorRuntime:
    """The fp32 variant, loaded once for the module."""
    return _runtime(models_dir, "cpu-fp32")


@pytest.fixture(scope="module")
def int8(models_dir: Path) -> GeneratorRuntime:
    """This CPU's int8 variant, loaded once for the module."""
    return _runtime(models_dir, "cpu-int8")


def test_greedy_answers_repeat_across_calls_and_instances(
    models_dir: Path, int8: GeneratorRuntime
) -> None:
    conversations = [CAPITAL, STORY]
    first = int8.generate(conversations, 12)
    assert int8.generate(conversations, 12) == first
    assert _runtime(models_dir, "cpu-int8").generate(conversations, 12) == first


def test_answer_stops_at_the_end_of_turn(fp32: GeneratorRuntime) -> None:
    (answer,) = fp32.generate([CAPITAL], 32)
    assert answer.finish_reason == "stop"
    assert 0 < len(answer.tokens) < 32
    assert "Paris" in answer.text
    assert "<|im_end|>" not in answer.text


def test_answer_stops_at_max_tokens(fp32: GeneratorRuntime) -> None:
    (answer,) = fp32.generate([STORY], 5)
    assert answer.finish_reason == "length"
    assert len(answer.tokens) == 5


def test_tokens_decode_to_the_text(fp32: GeneratorRuntime) -> None:
    (answer,) = fp32.generate([STORY], 10)
    assert answer.text
    # Its own ids, run back through the tokenizer, give the text the answer reports.
    assert fp32.decode(answer.tokens) == answer.text


def test_prompt_beyond_the_context_is_bad_input(fp32: GeneratorRuntime) -> None:
    # A turn holds at most 8192 characters: six of them hold more tokens than the context.
    long = [ChatTurn(role="user", content="word " * 1600)] * 6
    assert len(fp32.prompt_ids(long)) > fp32.context
    with pytest.raises(BadInput, match="context"):
        fp32.generate([long], 8)
    fits = len(fp32.prompt_ids(CAPITAL))
    with pytest.raises(BadInput, match="context"):
        fp32.generate([CAPITAL], fp32.context - fits + 1)


def test_int8_answers_stay_close_to_fp32(
    models_dir: Path, fp32: GeneratorRuntime, int8: GeneratorRuntime
) -> None:
    conversations = [[ChatTurn(role="user", content=prompt)] for prompt in PROMPTS[:10]]
    reference = fp32.generate(conversations, 24)
    answers = int8.generate(conversations, 24)
    assert all(answer.text.strip() for answer in answers)
    embedder = EmbeddingRuntime.from_manifest(
        models_dir, load_manifest(models_dir).variant_for(EMBED_MODEL, "cpu-fp32")
    )
    cosines = np.sum(
        embedder.embed([a.text for a in reference]) * embedder.embed([a.text for a in answers]),
        axis=1,
    )
    identical = sum(a.tokens == b.tokens for a, b in zip(reference, answers, strict=True))
    print(
        f"int8 vs fp32 on {len(answers)} prompts: {identical} identical;"
        f" cosine mean {cosines.mean():.4f}, min {cosines.min():.4f}"
    )
