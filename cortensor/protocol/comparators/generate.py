"""Generations agree token for token within one precision, and by meaning across them.

Decoding is greedy (the likeliest token every step), so two replicas of one prepared
graph compute the same logits and pick the same tokens: any difference is a wrong
answer. The int8 graphs for VNNI and for AVX2 CPUs answered all 16 measured prompts
alike too, and the build a result names is the node's own word, which a dishonest node
would bend to be weighed more loosely: so replicas of one precision must match token for
token whatever build they name. Between precisions (int8 against fp32; the precision is
the hardware class's, which the guard's ledger checks against the assignment) a logit
that is nearly tied can tip the other way, and from that token on the two answers part
ways while saying much the same thing. There the two texts are embedded with
all-MiniLM-L6-v2 and agree when the cosine of their embeddings reaches THRESHOLD; the
threshold, the measurement behind it and what it cannot catch are in docs/generation.md.

The embedding model is not part of this pure core: the process that judges (a guard, a
probe's checker, a replay) gives it with `use_similarity`, once, before it compares
answers of two precisions. Comparing within one precision needs no model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cortensor.protocol.comparators.precision import pair

THRESHOLD = 0.5
"""The lowest cosine of two answers' MiniLM embeddings at which answers of different
precisions agree. Measured (docs/generation.md, 16 prompts, 48 tokens): honest fp32 against
int8 answers reach 0.615 at the least (median 0.928); another prompt's answer 0.390 at
the most. An answer cut to its half or with its words shuffled stays above it: across
precisions the comparator catches answers to something else, not a spoiled answer to the
right prompt, which only a comparison within one precision catches."""

Similarity = Callable[[str, str], float]
"""The cosine of two texts' sentence embeddings."""

_loader: Callable[[], Similarity] | None = None
_similarity: Similarity | None = None


def use_similarity(loader: Callable[[], Similarity]) -> None:
    """Set how answers of two precisions are compared: `loader` is called once, at the first
    such comparison, and its function is used from then on."""
    global _loader, _similarity
    _loader, _similarity = loader, None


def _similar(text_a: str, text_b: str) -> float:
    global _similarity
    if _similarity is None:
        if _loader is None:
            raise RuntimeError(
                "generate answers of two precisions are compared by their embeddings; call"
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
    """Whether two answers of different precisions say the same thing."""
    if text_a == text_b:
        return True
    if not text_a.strip() or not text_b.strip():
        return False
    cosine = _similar(text_a, text_b)
    return math.isfinite(cosine) and cosine >= THRESHOLD


def agree(a: Any, precision_a: str, b: Any, precision_b: str) -> bool:
    """Whether two generate outputs are the same answers: the same tokens, text and end
    within one precision, whatever builds the labels name; texts whose embeddings are
    close across precisions."""
    answers_a, answers_b = generations(a), generations(b)
    if answers_a is None or answers_b is None or len(answers_a) != len(answers_b):
        return False
    precisions, _ = pair(precision_a, precision_b)
    if len(precisions) == 1:
        return answers_a == answers_b
    return all(close(x[0], y[0]) for x, y in zip(answers_a, answers_b, strict=True))
