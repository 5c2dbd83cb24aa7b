"""The generate comparator's margins, measured: how close honest answers of two builds are,
and how close dishonest answers come, in the cosine of their MiniLM embeddings.

Honest pairs: the same prompt answered by two prepared builds (fp32 against each int8
graph, and the int8 graphs against each other). Dishonest pairs, each against the fp32
answer: the answer cut to its first half, its words shuffled, and another prompt's
answer. `python -m cortensor.tools.generation_margins` prints the figures as JSON;
docs/generation.md records a run.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cortensor.catalog import GENERATE_MODEL
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.generator import GeneratorRuntime
from cortensor.inference.similarity import text_similarity
from cortensor.protocol.comparators.generate import THRESHOLD
from cortensor.schemas import ChatTurn
from cortensor.settings import Settings

PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "What is the capital of Japan?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "What is the largest planet in the solar system?",
    "What is the boiling point of water in Celsius?",
    "What is the chemical symbol for gold?",
    "Who wrote Romeo and Juliet?",
    "Give me a tip for sleeping better.",
    "Write one sentence about the sea.",
    "Why do leaves change colour in autumn?",
    "What is a good name for a cat?",
    "Explain what a computer is in one sentence.",
    "Suggest a healthy breakfast.",
    "What is the capital of Germany?",
)
MAX_TOKENS = 48


def _cut(text: str) -> str:
    words = text.split()
    return " ".join(words[: len(words) // 2])


def _shuffled(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def _summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "min": round(ordered[0], 4),
        "median": round(statistics.median(ordered), 4),
        "max": round(ordered[-1], 4),
        "at_or_above_threshold": round(sum(v >= THRESHOLD for v in ordered) / len(ordered), 3),
    }


def margins(
    models_dir: Path, prompts: Sequence[str] = PROMPTS, max_tokens: int = MAX_TOKENS
) -> dict[str, Any]:
    """Cosines of honest and dishonest pairs, summarized per kind, with the share of each
    kind the comparator (THRESHOLD) lets agree."""
    manifest = load_manifest(models_dir)
    builds = {
        v.variant: GeneratorRuntime.from_manifest(models_dir, v, threads=2)
        for v in manifest.variants
        if v.name == GENERATE_MODEL and v.format == "onnx-causal-lm"
    }
    similar = text_similarity(models_dir)
    answers = {
        name: [
            runtime.generate([[ChatTurn(role="user", content=p)]], max_tokens)[0].text
            for p in prompts
        ]
        for name, runtime in builds.items()
    }
    reference = answers["fp32"]
    rng = random.Random(7)
    kinds: dict[str, list[float]] = {}
    identical: dict[str, float] = {}
    names = sorted(builds)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair = f"honest {a} vs {b}"
            kinds[pair] = [similar(x, y) for x, y in zip(answers[a], answers[b], strict=True)]
            same = sum(x == y for x, y in zip(answers[a], answers[b], strict=True))
            identical[pair] = round(same / len(prompts), 3)
    others = reference[1:] + reference[:1]
    kinds["dishonest: first half"] = [similar(t, _cut(t)) for t in reference if _cut(t)]
    kinds["dishonest: words shuffled"] = [similar(t, _shuffled(t, rng)) for t in reference]
    kinds["dishonest: another prompt's answer"] = [
        similar(t, o) for t, o in zip(reference, others, strict=True)
    ]
    return {
        "prompts": len(prompts),
        "max_tokens": max_tokens,
        "threshold": THRESHOLD,
        "identical_text_share": identical,
        "cosine": {kind: _summary(values) for kind, values in kinds.items()},
    }


def main() -> None:
    print(json.dumps(margins(Settings().models_dir), indent=2))


if __name__ == "__main__":
    main()
