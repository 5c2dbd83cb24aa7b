"""How close two texts are in meaning: the cosine of their all-MiniLM-L6-v2 embeddings.

The generate comparator weighs answers of two builds with it (cortensor.protocol
.comparators.generate). Every judge uses the fp32 graph, which gives a text one vector
whatever else it runs with, so that guards on one CPU reach the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from cortensor.catalog import EMBED_MODEL
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.embedding import EmbeddingRuntime, Embeddings

JUDGE_CLASS = "cpu-fp32"
CACHED_TEXTS = 4096
"""Texts whose vectors are kept: a job's answers are compared pairwise, each several times."""


def text_similarity(models_dir: Path, threads: int = 1) -> Callable[[str, str], float]:
    """The cosine of two texts' embeddings, from the prepared fp32 MiniLM graph in
    `models_dir` (ModelsNotPrepared when it is missing)."""
    variant = load_manifest(models_dir).variant_for(EMBED_MODEL, JUDGE_CLASS)
    runtime = EmbeddingRuntime.from_manifest(models_dir, variant, threads=threads)

    @lru_cache(maxsize=CACHED_TEXTS)
    def vector(text: str) -> Embeddings:
        row: Embeddings = runtime.embed([text])[0]
        return row

    def cosine(text_a: str, text_b: str) -> float:
        return float(np.dot(vector(text_a), vector(text_b)))

    return cosine
