"""Generation figures: tokens per second of each prepared variant, and int8's fidelity to fp32.

One node runs one conversation at a time (runtimes.generator), so speed is measured that
way, with 1 and 2 ONNX Runtime threads. Fidelity compares the int8 answers with the fp32
ones: identical token sequences, the length of the tokens they agree on from the start,
and the cosine of the two texts' all-MiniLM-L6-v2 embeddings (its fp32 variant).

Run `python -m cortensor.tools.bench_generate` for the figures on PROMPTS as JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from cortensor.catalog import GENERATE_MODEL, HwClass
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.generator import GeneratorRuntime
from cortensor.inference.similarity import text_similarity
from cortensor.schemas import ChatTurn, Generation
from cortensor.settings import Settings

PROMPTS: tuple[str, ...] = (
    "What is the capital of France? Answer in one word.",
    "Explain photosynthesis to a ten-year-old.",
    "Write a haiku about autumn leaves.",
    "List three benefits of regular exercise.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Give me a short tip for writing clean Python code.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What does a CPU do in a computer?",
    "Suggest a name for a friendly robot.",
    "How do I boil an egg?",
    "What is the difference between weather and climate?",
    "Write one sentence describing the ocean at night.",
    "Name three planets in our solar system.",
    "What is a prime number?",
    "Give a polite way to decline a meeting invitation.",
    "What causes the seasons on Earth?",
    "Describe a cat in five words.",
    "What is the boiling point of water at sea level?",
)
"""Varied short questions and requests, one user turn each."""

VARIANTS: dict[str, HwClass] = {"fp32": "cpu-fp32", "int8": "cpu-int8"}
"""The figures' names for the variants: the best one of each class for this CPU."""
THREADS = (1, 2)


def generation_figures(models_dir: Path, prompts: Sequence[str], max_tokens: int) -> dict[str, Any]:
    """Tokens per second per variant and thread count, and int8's fidelity to fp32.

    Each prompt is one conversation of one user turn, answered with at most `max_tokens`
    new tokens. Speed counts the new tokens over the wall time of all prompts, one
    conversation at a time, prompt processing included, after one warm-up call.
    """
    manifest = load_manifest(models_dir)
    conversations = [[ChatTurn(role="user", content=prompt)] for prompt in prompts]
    speed: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[Generation]] = {}
    for name, hw_class in VARIANTS.items():
        variant = manifest.variant_for(GENERATE_MODEL, hw_class)
        speed[name] = {"variant": variant.variant}
        runs: list[list[Generation]] = []
        for threads in THREADS:
            runtime = GeneratorRuntime.from_manifest(models_dir, variant, threads=threads)
            runtime.generate(conversations[:1], 4)
            started = time.perf_counter()
            # The runtime answers the conversations one after another.
            run = runtime.generate(conversations, max_tokens)
            elapsed = time.perf_counter() - started
            new_tokens = sum(len(g.tokens) for g in run)
            speed[name][f"tokens_per_s_{threads}_threads"] = round(new_tokens / elapsed, 1)
            runs.append(run)
        speed[name]["new_tokens"] = sum(len(g.tokens) for g in runs[0])
        speed[name]["same_tokens_across_threads"] = all(
            [g.tokens for g in run] == [g.tokens for g in runs[0]] for run in runs
        )
        answers[name] = runs[0]
    return {
        "prompts": len(prompts),
        "max_tokens": max_tokens,
        "speed": speed,
        "fidelity": _fidelity(models_dir, answers["fp32"], answers["int8"]),
    }


def _fidelity(
    models_dir: Path, reference: list[Generation], other: list[Generation]
) -> dict[str, Any]:
    """How close `other`'s answers are to `reference`'s, prompt by prompt."""
    prefixes = [_common_prefix(a.tokens, b.tokens) for a, b in zip(reference, other, strict=True)]
    similar = text_similarity(models_dir)
    cosines = [similar(a.text, b.text) for a, b in zip(reference, other, strict=True)]
    return {
        "identical_share": round(
            mean(a.tokens == b.tokens for a, b in zip(reference, other, strict=True)), 3
        ),
        "agreeing_prefix_mean": round(mean(prefixes), 1),
        "agreeing_prefix_min": min(prefixes),
        "reference_tokens_mean": round(mean(len(g.tokens) for g in reference), 1),
        "cosine_mean": round(mean(cosines), 4),
        "cosine_min": round(min(cosines), 4),
    }


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    """How many tokens two sequences share from their start."""
    for index, (a, b) in enumerate(zip(first, second, strict=False)):
        if a != b:
            return index
    return min(len(first), len(second))


def main() -> None:
    """Print the figures for PROMPTS at 64 new tokens, with the local models."""
    figures = generation_figures(Settings().models_dir, PROMPTS, max_tokens=64)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
