"""The generate comparator on the prepared models, with the real MiniLM similarity: honest
answers of one build agree token for token, spoiled ones do not; across builds an answer
to another prompt is refused and the honest answers mostly agree (docs/generation.md has
the full measurement)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cortensor.catalog import GENERATE_MODEL
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.generator import GeneratorRuntime
from cortensor.inference.similarity import text_similarity
from cortensor.protocol.comparators import COMPARATORS, generate
from cortensor.schemas import ChatTurn, Generation
from cortensor.tools import generation_margins

pytestmark = [pytest.mark.models, pytest.mark.slow]

agree = COMPARATORS["generate"]
PROMPTS = generation_margins.PROMPTS[:6]
TOKENS = 32


@pytest.fixture(scope="module")
def answers(models_dir: Path) -> dict[str, list[Generation]]:
    """Each build's answers to PROMPTS, with the real similarity set for the comparator."""
    generate.use_similarity(lambda: text_similarity(models_dir))
    manifest = load_manifest(models_dir)
    found: dict[str, list[Generation]] = {}
    for hw_class in ("cpu-fp32", "cpu-int8"):
        runtime = GeneratorRuntime.from_manifest(
            models_dir, manifest.variant_for(GENERATE_MODEL, hw_class)
        )
        found[hw_class] = [
            runtime.generate([[ChatTurn(role="user", content=p)]], TOKENS)[0] for p in PROMPTS
        ]
    return found


def _out(g: Generation) -> list[dict[str, object]]:
    return [g.model_dump(mode="json")]


def _spoiled(g: Generation, rng: random.Random) -> list[Generation]:
    words = g.text.split()
    shuffled = words[:]
    rng.shuffle(shuffled)
    half = len(g.tokens) // 2
    return [
        Generation(
            text=" ".join(words[: len(words) // 2]), tokens=g.tokens[:half], finish_reason="stop"
        ),
        Generation(text=" ".join(shuffled), tokens=g.tokens, finish_reason=g.finish_reason),
    ]


def test_within_a_build_only_the_same_tokens_agree(answers: dict[str, list[Generation]]) -> None:
    rng = random.Random(3)
    for g in answers["cpu-int8"]:
        assert agree(_out(g), "int8/int8-tok", _out(g), "int8/int8-tok")
        for bad in _spoiled(g, rng):
            if bad != g:
                assert not agree(_out(g), "int8/int8-tok", _out(bad), "int8/int8-tok"), bad


def test_across_builds_another_prompts_answer_is_refused(
    answers: dict[str, list[Generation]],
) -> None:
    fp32, int8 = answers["cpu-fp32"], answers["cpu-int8"]
    for i, g in enumerate(int8):
        other = fp32[(i + 1) % len(fp32)]
        assert not agree(_out(other), "fp32", _out(g), "int8/int8-tok"), (g.text, other.text)


def test_across_builds_most_honest_answers_agree(answers: dict[str, list[Generation]]) -> None:
    pairs = zip(answers["cpu-fp32"], answers["cpu-int8"], strict=True)
    agreeing = [agree(_out(a), "fp32", _out(b), "int8/int8-tok") for a, b in pairs]
    assert sum(agreeing) >= len(agreeing) // 2 + 1, agreeing
