"""Classifications agree when every text gets the same top label with a close score.

The classifier is a softmax head over the sentence embedding, so its scores inherit the
embedding's precision error. Two fp32 nodes differ only in the last bits, and fp16 keeps
embeddings within cosine 0.995 of fp32: 0.02 leaves room for both (a starting value, not
measured on the classifier). Quantized int8 embeddings move by more, and int8 kernels
differ between CPU instruction sets (VNNI, AVX2 with its 16-bit saturation), so every
pair with int8, or of two builds, gets 0.15. Measured: on 52 English texts (20 plain
sentences, 32 requests) the top-1 score of int8 differs from fp32's by at most 0.063
(int8-avx2: 0.075), 0.018 on average; on 12 short requests (ops/bench) by up to 0.130.
A wrong answer (another label, or the right label with its score shifted by 0.3) stays
outside every tolerance.

Only the top label and its score are compared; the rest of the top-k list comes from
whichever replica becomes canonical. An input whose two best labels are nearly tied can
flip between precisions, and then the whole output disagrees: in the same measurement
int8 picked another top label for 2 of 52 texts (int8-avx2: 1), all near-ties at low
confidence (0.16 against 0.13, for example).
"""

from __future__ import annotations

import math
from typing import Any

from cortensor.protocol.comparators.precision import pair

LOOSEST = 0.15
TOLERANCES: dict[frozenset[str], float] = {
    frozenset({"fp32"}): 0.02,
    frozenset({"fp16"}): 0.02,
    frozenset({"fp32", "fp16"}): 0.02,
    frozenset({"int8"}): 0.15,
    frozenset({"fp32", "int8"}): 0.15,
    frozenset({"fp16", "int8"}): 0.15,
}


def tolerance(precision_a: str, precision_b: str) -> float:
    """The largest difference of top-1 scores at which outputs of these precisions
    (labels, see comparators.precision) agree."""
    precisions, builds_differ = pair(precision_a, precision_b)
    return LOOSEST if builds_differ else TOLERANCES.get(precisions, LOOSEST)


def _score(value: Any) -> float | None:
    """A probability, or None. (JSON may hold an integer too large for a float.)"""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return float(value) if value in (0, 1) else None
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def _label_score(item: Any) -> tuple[str, float] | None:
    if not isinstance(item, dict):
        return None
    label, score = item.get("label"), _score(item.get("score"))
    if not isinstance(label, str) or score is None:
        return None
    return label, score


def top_labels(output: Any) -> list[tuple[str, float]] | None:
    """(top label, its score) of each text, or None when the output is not a classification.

    A classification is a non-empty list of {"label", "score", "top"}, scores being
    probabilities and top a list of {"label", "score"}.
    """
    if not isinstance(output, list) or not output:
        return None
    tops: list[tuple[str, float]] = []
    for item in output:
        best = _label_score(item)
        ranked = item.get("top") if isinstance(item, dict) else None
        if best is None or not isinstance(ranked, list):
            return None
        if any(_label_score(entry) is None for entry in ranked):
            return None
        tops.append(best)
    return tops


def agree(a: Any, precision_a: str, b: Any, precision_b: str) -> bool:
    """Whether two classify outputs are the same answer.

    Every text needs the same top label with top-1 scores within the tolerance. Between
    different precisions or builds, a text whose two best labels are nearly tied may
    come out either way: there, two different top labels also agree when each output
    ranks the other's label within the tolerance of its own best, with scores for both
    labels within the tolerance across the outputs.
    """
    tops_a, tops_b = top_labels(a), top_labels(b)
    if tops_a is None or tops_b is None or len(tops_a) != len(tops_b):
        return False
    limit = tolerance(precision_a, precision_b) + 1e-9  # 0.90 against 0.88 is within 0.02
    near_ties = precision_a != precision_b
    for i, ((label_a, score_a), (label_b, score_b)) in enumerate(zip(tops_a, tops_b, strict=True)):
        if label_a == label_b:
            if abs(score_a - score_b) > limit:
                return False
        elif not (near_ties and _near_tie(a[i], b[i], limit)):
            return False
    return True


def _ranked(item: dict[str, Any]) -> dict[str, float]:
    scores = (_label_score(entry) for entry in item["top"])
    return {label: score for label, score in (s for s in scores if s is not None)}


def _near_tie(item_a: dict[str, Any], item_b: dict[str, Any], limit: float) -> bool:
    """Whether two different top labels are the two sides of one near-tie."""
    ranked_a, ranked_b = _ranked(item_a), _ranked(item_b)
    x, y = item_a["label"], item_b["label"]
    if not {x, y} <= ranked_a.keys() & ranked_b.keys():
        return False
    return (
        ranked_a[x] - ranked_a[y] <= limit
        and ranked_b[y] - ranked_b[x] <= limit
        and abs(ranked_a[x] - ranked_b[x]) <= limit
        and abs(ranked_a[y] - ranked_b[y]) <= limit
    )
