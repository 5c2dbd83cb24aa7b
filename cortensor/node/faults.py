"""Dishonest behaviour on purpose, for tests and demos (`cortensor node --fault`)."""

from __future__ import annotations

import random
from typing import Literal

import numpy as np
from numpy.typing import NDArray

FaultMode = Literal["random", "lazy", "noisy"]
FAULT_MODES: tuple[FaultMode, ...] = ("random", "lazy", "noisy")


def _unit_rows(matrix: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: NDArray[np.float32] = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


class Fault:
    """Replaces a fraction `rate` of a node's answers with wrong ones.

    random: fresh random unit vectors; lazy: one constant vector for everything;
    noisy: the true vectors with enough Gaussian noise to fall well below any
    agreement threshold (cosine about 0.6).
    """

    def __init__(self, mode: FaultMode, rate: float, seed: int | None = None) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; use one of {', '.join(FAULT_MODES)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fault rate must be between 0 and 1")
        self.mode, self.rate = mode, rate
        self._rng = random.Random(seed)
        self._np = np.random.default_rng(seed)

    def strikes(self) -> bool:
        """Whether this job gets a wrong answer."""
        return self._rng.random() < self.rate

    def corrupt(self, embeddings: NDArray[np.float32]) -> NDArray[np.float32]:
        """A wrong answer of the same shape as the true one."""
        n, dim = embeddings.shape
        if self.mode == "random":
            return _unit_rows(self._np.standard_normal((n, dim)).astype(np.float32))
        if self.mode == "lazy":
            constant = np.ones((1, dim), dtype=np.float32)
            return _unit_rows(np.repeat(constant, n, axis=0))
        noise = self._np.standard_normal((n, dim)).astype(np.float32) * (1.3 / np.sqrt(dim))
        return _unit_rows(embeddings + noise)
