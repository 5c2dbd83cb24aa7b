"""Generations agree token for token within one build, and by meaning across builds.

Decoding is greedy (the likeliest token every step), so two replicas of one prepared
graph compute the same logits and pick the same tokens: any difference is a wrong
answer. Between builds (int8 against fp32, a VNNI graph against an AVX2 one) a logit
that is nearly tied can tip the other way, and from that token on the two answers part
ways while saying much the same thing. There the two texts are embedded with
all-MiniLM-L6-v2 and agree when the cosine of their embeddings reaches THRESHOLD; the
threshold, the measurement behind it and what it cannot catch are in docs/generation.md.

The embedding model is not part of this pure core: the process that judges (a guard, a
probe's checker, a replay) gives it with `use_similarity`, once, before it compares
answers of two builds. Comparing within one build needs no model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

THRESHOLD = 0.5
"""The lowest cosine of two answers' MiniLM embeddings at which answers of different
builds agree. Measured (docs/generation.md, 16 prompts, 48 tokens): honest fp32 against
int8 answers reach 0.615 at the least (median 0.928); another prompt's answer 0.390 at
the most. An answer cut to its half or with its words shuffled stays above it: across
builds the comparator catches answers to something else, not a spoiled answer to the
right prompt, which only a comparison within one build catches."""

Similarity = Callable[[str, str], float]
"""The cosine of two texts' sentence embeddings."""

_loader: Callable[[], Similarity] | None = None
_similarity: Similarity | None = None


def use_similarity(loader: Callable[[], Similarity]) -> None:
    """Set how answers of two builds are compared: `loader` is called once, at the first
    such comparison, and its function is used from then on."""
    global _loader, _similarity
    _loader, _similarity = loader, None


def _similar(text_a: str, text_b: str) -> float:
    global _similarity
    if _similarity is None:
        if _loader is None:
            raise RuntimeError(
                "generate answers of two builds are compared by their embeddings; call"
                " comparators.generate.use_similarity first"
            )
        _similarity = _loader()
    return _similarity(text_a, text_b)


def _generation(item: Any) -> tuple[str, list[int], str] | None:
    if not isinstance(item, dict):
        return None
    text, tokens, finish = item.get("text"), item.get("tokens"), item.get("finish_reason")
    if not isinstance(text, str) or finish not in ("stop", "length"):
        return None
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in tokens
    ):
        return None
    return text, tokens, finish


def generations(output: Any) -> list[tuple[str, list[int], str]] | None:
    """(text, tokens, finish reason) of each answer, or None when the output is not a
    list of generations."""
    if not isinstance(output, list) or not output:
        return None
    parsed = [_generation(item) for item in output]
    if any(p is None for p in parsed):
        return None
    return [p for p in parsed if p is not None]


def close(text_a: str, text_b: str) -> bool:
    """Whether two answers of different builds say the same thing."""
    if text_a == text_b:
        return True
    if not text_a.strip() or not text_b.strip():
        return False
    cosine = _similar(text_a, text_b)
    return math.isfinite(cosine) and cosine >= THRESHOLD


def agree(a: Any, precision_a: str, b: Any, precision_b: str) -> bool:
    """Whether two generate outputs are the same answers: the same tokens, text and end
    within one build (precision label); texts whose embeddings are close across builds."""
    answers_a, answers_b = generations(a), generations(b)
    if answers_a is None or answers_b is None or len(answers_a) != len(answers_b):
        return False
    if precision_a == precision_b:
        return answers_a == answers_b
    return all(close(x[0], y[0]) for x, y in zip(answers_a, answers_b, strict=True))
