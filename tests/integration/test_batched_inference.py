"""The prepared int8 graphs give a text the same vector alone and in any batch, in any
order, with any padding: redundant nodes agree however their work was grouped, and a node
may put several requests' texts in one call."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from cortensor.catalog import CLASSIFY_MODEL, EMBED_MODEL
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes import Runtime
from cortensor.inference.runtimes.classifier import ClassifierRuntime
from cortensor.inference.runtimes.embedding import EmbeddingRuntime
from cortensor.schemas import Assignment, utcnow
from cortensor.services.node.bridge import NatsBridge
from cortensor.services.node.service import NodeIdentity, NodeService
from cortensor.settings import Settings
from tests.node_keys import key_of

pytestmark = [pytest.mark.models, pytest.mark.slow]

POOL = [
    "a",
    "Hi",
    "?",
    "🎉🎉",
    "Thanks.",
    "Set an alarm for six thirty.",
    "¿Dónde está la estación de tren más cercana?",
    "Der Zug nach München fährt um halb acht.",
    "SELECT id FROM users WHERE active ORDER BY id;",
    "Shares fell 8% after the company cut its forecast to $1.2 billion.",
    "The committee postponed the vote until the auditors had finished their review of the"
    " accounts, which several members said could take until the end of the summer.",
    # Longer than 256 word pieces: cut by the tokenizer, the longest row of any batch.
    " ".join(["Each replica stores a full copy of the ledger and answers on its own."] * 30),
]
SAME = 0.99999
"""Measured bit for bit the same; the comparator's own-build threshold is 0.99."""


@pytest.fixture(scope="module")
def int8_graphs(models_dir: Path) -> dict[str, EmbeddingRuntime]:
    """Every prepared int8 embedding graph this CPU runs (its own and the AVX2 one)."""
    manifest = load_manifest(models_dir)
    return {
        v.variant: EmbeddingRuntime.from_manifest(models_dir, v)
        for v in manifest.variants
        if v.name == EMBED_MODEL and v.precision == "int8"
    }


@pytest.fixture(scope="module")
def alone(int8_graphs: dict[str, EmbeddingRuntime]) -> dict[str, NDArray[np.float32]]:
    """Each variant's vectors of POOL, every text run on its own."""
    return {
        variant: np.vstack([runtime.embed([text]) for text in POOL])
        for variant, runtime in int8_graphs.items()
    }


def test_the_int8_graphs_are_batch_independent(
    int8_graphs: dict[str, EmbeddingRuntime],
) -> None:
    assert int8_graphs
    assert all(runtime.batch_independent for runtime in int8_graphs.values())


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=12))
def test_a_text_gets_the_same_vector_in_any_batch(
    int8_graphs: dict[str, EmbeddingRuntime],
    alone: dict[str, NDArray[np.float32]],
    picks: list[int],
) -> None:
    for variant, runtime in int8_graphs.items():
        batched = runtime.embed([POOL[i] for i in picks])
        cosines = np.sum(batched * alone[variant][picks], axis=1)
        assert cosines.min() >= SAME, (variant, picks, cosines)


def test_the_node_answers_alike_batched_and_one_at_a_time(models_dir: Path) -> None:
    manifest = load_manifest(models_dir)
    embedder = EmbeddingRuntime.from_manifest(
        models_dir, manifest.variant_for(EMBED_MODEL, "cpu-int8")
    )
    runtimes: dict[str, Runtime] = {
        EMBED_MODEL: embedder,
        CLASSIFY_MODEL: ClassifierRuntime.from_manifest(
            models_dir, manifest.variant_for(CLASSIFY_MODEL, "cpu-int8"), embedder
        ),
    }
    identity = NodeIdentity(
        node_id="batched-node",
        hw_class="cpu-int8",
        models=tuple(runtimes),
        tasks=("embed", "classify"),
    )
    # compute and compute_all publish nothing: no bridge is needed.
    service = NodeService(
        Settings(), identity, runtimes, bridge=cast(NatsBridge, None), key=key_of("batched-node")
    )
    delivery = [
        Assignment(
            job_id=uuid.uuid4(),
            node_id=identity.node_id,
            task=task,
            model=EMBED_MODEL if task == "embed" else CLASSIFY_MODEL,
            inputs=[POOL[(start + k) % len(POOL)] for k in range(1 + start % 4)],
            top_k=3,
            hw_class="cpu-int8",
            deadline_at=utcnow() + timedelta(seconds=60),
        )
        for start, task in enumerate(["embed", "classify"] * 5)
    ]
    together = service.compute_all(delivery)
    one_by_one = [service.compute(a) for a in delivery]
    for shared, own in zip(together, one_by_one, strict=True):
        assert shared.error is None
        assert shared.classes == own.classes
        if own.embeddings is not None:
            cosines = np.sum(np.array(shared.embeddings) * np.array(own.embeddings), axis=1)
            assert cosines.min() >= SAME
