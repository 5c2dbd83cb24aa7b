"""Embeddings agree when every pair of vectors is close in cosine similarity.

Two nodes running the same fp32 model on different CPUs differ in the last few bits;
an int8 model differs from fp32 by more (measured on all-MiniLM-L6-v2 with the
per-token int8 graphs of tools.quantize: min cosine 0.989, mean 0.9986 over 248 varied
sentences; the dynamically quantized graphs they replaced: min 0.960). The threshold
therefore depends on the pair of precisions compared. A random or lazy answer lands
near cosine 0 in 384 dimensions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from cortensor.protocol.comparators.precision import pair

THRESHOLDS: dict[frozenset[str], float] = {
    frozenset({"fp32"}): 0.999,
    frozenset({"fp16"}): 0.995,
    frozenset({"int8"}): 0.99,
    frozenset({"fp32", "fp16"}): 0.995,
    frozenset({"fp32", "int8"}): 0.95,
    frozenset({"fp16", "int8"}): 0.95,
}


BETWEEN_BUILDS = 0.93
"""Two int8 graphs of one model, quantized for VNNI (signed weights) and for AVX2
(unsigned). The per-token graphs store the same codes and give the same vectors (bit for
bit on 348 sentences); the dynamically quantized graphs before them did not (min cosine
0.952, mean 0.989 on 50 sentences, short texts the worst). The threshold stays where
those needed it while nodes whose models directory still holds a dynamic graph remain."""


def threshold(precision_a: str, precision_b: str) -> float:
    """The lowest cosine at which outputs of these two precisions (labels, see
    comparators.precision) still agree."""
    precisions, builds_differ = pair(precision_a, precision_b)
    if builds_differ:
        return BETWEEN_BUILDS
    return THRESHOLDS.get(precisions, 0.95)


def as_matrix(output: Any) -> NDArray[np.float64] | None:
    """The output as an (n, d) matrix of unit rows, or None when it is not one."""
    try:
        matrix = np.asarray(output, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if matrix.ndim != 2 or matrix.shape[0] == 0 or not np.all(np.isfinite(matrix)):
        return None
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        return None
    unit: NDArray[np.float64] = matrix / norms
    return unit


def min_cosine(a: Any, b: Any) -> float:
    """The lowest row-wise cosine between two outputs; -1 when they cannot be compared."""
    ma, mb = as_matrix(a), as_matrix(b)
    if ma is None or mb is None or ma.shape != mb.shape:
        return -1.0
    return float(np.min(np.sum(ma * mb, axis=1)))


def agree(a: Any, precision_a: str, b: Any, precision_b: str) -> bool:
    """Whether two embedding outputs are the same answer."""
    return min_cosine(a, b) >= threshold(precision_a, precision_b)
