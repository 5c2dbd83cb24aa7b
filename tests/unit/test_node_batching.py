"""A node's assignments share model calls and still get the answers they get one at a time,
with faults drawn per assignment and a failing input failing only its own assignment."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from cortensor.inference.runtimes import Runtime
from cortensor.schemas import Assignment, Classification, LabelScore, utcnow
from cortensor.services.node import batching
from cortensor.services.node.bridge import NatsBridge
from cortensor.services.node.faults import Fault
from cortensor.services.node.service import NodeIdentity, NodeService
from cortensor.settings import Settings

EMBEDDER, CLASSIFIER = "all-MiniLM-L6-v2", "rag-intent-classifier"
NODE = "batching-node"


class RowEmbedder:
    """Each text's vector depends on that text alone; every call is recorded."""

    def __init__(self, batch_independent: bool = True) -> None:
        self.batch_independent = batch_independent
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.calls.append(list(texts))
        if any("boom" in text for text in texts):
            raise RuntimeError("this model cannot embed 'boom'")
        rows = [[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts]
        vectors = np.array(rows, dtype=np.float32)
        normalized: NDArray[np.float32] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return normalized


class LetterClassifier:
    """Labels a text by its first letters; ranks `top_k` of them."""

    labels = ("a", "b", "c", "d")
    batch_independent = True

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def classify(self, texts: Sequence[str], top_k: int) -> list[Classification]:
        self.calls.append(list(texts))
        results = []
        for text in texts:
            top = [LabelScore(label=c, score=0.5) for c in sorted(set(text[:top_k]))]
            results.append(Classification(label=top[0].label, score=0.5, top=top))
        return results


def node(runtimes: dict[str, Runtime], fault: Fault | None = None) -> NodeService:
    identity = NodeIdentity(
        node_id=NODE, hw_class="cpu-int8", models=tuple(runtimes), tasks=("embed", "classify")
    )
    # compute_all publishes nothing: no bridge is needed.
    bridge = cast(NatsBridge, None)
    return NodeService(Settings(), identity, runtimes, bridge=bridge, key=_key(), fault=fault)


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def assignment(inputs: Sequence[str], task: str = "embed", top_k: int = 3) -> Assignment:
    return Assignment(
        job_id=uuid.uuid4(),
        node_id=NODE,
        task=task,  # type: ignore[arg-type]
        model=EMBEDDER if task == "embed" else CLASSIFIER,
        inputs=list(inputs),
        top_k=top_k,
        hw_class="cpu-int8",
        deadline_at=utcnow() + timedelta(seconds=30),
    )


def outputs(results: Sequence[Any]) -> list[Any]:
    return [(r.assignment_id, r.embeddings, r.classes, r.error) for r in results]


TEXTS = st.text(alphabet="abcd xyz", min_size=1, max_size=30).filter(str.strip)
ASSIGNMENTS = st.lists(
    st.tuples(
        st.lists(TEXTS, min_size=1, max_size=6),
        st.sampled_from(["embed", "classify"]),
        st.sampled_from([1, 3]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(ASSIGNMENTS, st.integers(0, 2**16))
def test_shared_calls_give_the_answers_of_one_at_a_time(
    drawn: list[tuple[list[str], str, int]], seed: int
) -> None:
    delivery = [assignment(inputs, task, top_k) for inputs, task, top_k in drawn]
    runtimes: dict[str, Runtime] = {EMBEDDER: RowEmbedder(), CLASSIFIER: LetterClassifier()}
    # The same fault, seeded alike, on both sides: its draws follow the assignments' order.
    together = node(runtimes, Fault("random", 0.5, seed=seed)).compute_all(delivery)
    one_by_one = node(runtimes, Fault("random", 0.5, seed=seed))
    alone = [one_by_one.compute(a) for a in delivery]
    assert outputs(together) == outputs(alone)
    assert all(r.elapsed_ms >= 0 for r in together)


def test_texts_of_one_model_share_calls_shortest_first() -> None:
    embedder = RowEmbedder()
    delivery = [assignment(["a longer text", "x"]), assignment(["mid text"]), assignment(["yy"])]
    results = node({EMBEDDER: embedder}).compute_all(delivery)
    assert embedder.calls == [["x", "yy", "mid text", "a longer text"]]
    assert [len(r.embeddings or []) for r in results] == [2, 1, 1]
    assert results[0].embeddings == embedder.embed(["a longer text", "x"]).tolist()


def test_calls_hold_at_most_the_largest_batch() -> None:
    embedder = RowEmbedder()
    delivery = [assignment([f"text {i}" for i in range(7)]) for _ in range(10)]
    answers = batching.answer_together(embedder, delivery, max_batch=32)
    assert [len(call) for call in embedder.calls] == [32, 32, 6]
    assert [len(a) for a, _ in answers] == [7] * 10
    assert all(seconds > 0 for _, seconds in answers)


def test_a_runtime_that_depends_on_the_batch_runs_each_assignment_alone() -> None:
    embedder = RowEmbedder(batch_independent=False)
    delivery = [assignment(["one"]), assignment(["two", "three"])]
    node({EMBEDDER: embedder}).compute_all(delivery)
    assert embedder.calls == [["one"], ["two", "three"]]


def test_classify_assignments_share_calls_only_with_the_same_top_k() -> None:
    classifier = LetterClassifier()
    delivery = [
        assignment(["abc"], "classify", 3),
        assignment(["bcd"], "classify", 1),
        assignment(["cab"], "classify", 3),
    ]
    results = node({CLASSIFIER: classifier}).compute_all(delivery)
    assert sorted(map(sorted, classifier.calls)) == [["abc", "cab"], ["bcd"]]
    assert [len((r.classes or [])[0].top) for r in results] == [3, 1, 3]


@pytest.mark.parametrize("bad", [0, 1])
def test_an_input_the_model_fails_on_fails_only_its_assignment(bad: int) -> None:
    delivery = [assignment(["fine"]), assignment(["also fine"])]
    delivery[bad] = assignment(["boom"])
    results = node({EMBEDDER: RowEmbedder()}).compute_all(delivery)
    assert results[bad].error is not None
    assert "cannot embed" in results[bad].error
    assert results[bad].embeddings is None
    good = results[1 - bad]
    assert good.error is None
    assert good.embeddings == RowEmbedder().embed(delivery[1 - bad].inputs).tolist()
