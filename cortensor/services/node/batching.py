"""Texts of several assignments run through one model call.

A node is often handed several embed or classify assignments for one model at once.
Running their texts together, sorted by length so that little padding is wasted, is
faster than one call per assignment, and gives each text the same answer as long as the
runtime says its answers do not depend on the batch (`batch_independent`): honest
redundant nodes must agree however their work happened to be grouped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, cast

import numpy as np

from cortensor.inference.runtimes import Classifier, Embedder, Runtime
from cortensor.schemas import Assignment

MAX_BATCH = 32
"""The most texts in one call: larger batches gain little and pad more."""

Shared = tuple[Any, float]
"""An assignment's true answer and its share, in seconds, of the calls that made it."""


def groups(assignments: Sequence[Assignment], runtimes: Mapping[str, Runtime]) -> list[list[int]]:
    """Indices of the assignments whose texts may share calls, in groups of two or more:
    one model, the same task and top_k, and a runtime whose answers do not depend on
    the batch."""
    found: dict[tuple[str, str, int], list[int]] = {}
    for index, assignment in enumerate(assignments):
        runtime = runtimes.get(assignment.model)
        if assignment.task in ("embed", "classify") and getattr(
            runtime, "batch_independent", False
        ):
            key = (assignment.model, assignment.task, assignment.top_k)
            found.setdefault(key, []).append(index)
    return [indices for indices in found.values() if len(indices) > 1]


def answer_together(
    runtime: Runtime, assignments: Sequence[Assignment], max_batch: int = MAX_BATCH
) -> list[Shared]:
    """The true answer of each assignment (as the runtime gives it for the assignment
    alone), its texts run with the others' in calls of at most `max_batch` texts."""
    first = assignments[0]
    call: Callable[[list[str]], Any]
    if first.task == "embed":
        call = cast(Embedder, runtime).embed
    else:
        call = partial(cast(Classifier, runtime).classify, top_k=first.top_k)
    texts = [text for a in assignments for text in a.inputs]
    answers, seconds = _run_sorted(call, texts, max_batch)
    shared: list[Shared] = []
    start = 0
    for assignment in assignments:
        end = start + len(assignment.inputs)
        rows = answers[start:end]
        answer = np.vstack(rows) if first.task == "embed" else list(rows)
        shared.append((answer, sum(seconds[start:end])))
        start = end
    return shared


def _run_sorted(
    call: Callable[[list[str]], Any], texts: Sequence[str], max_batch: int
) -> tuple[list[Any], list[float]]:
    """`call`'s answer for each text and each text's share of the time of its call, in the
    order of `texts`; the calls take the texts shortest first."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[Any] = [None] * len(texts)
    seconds = [0.0] * len(texts)
    for start in range(0, len(order), max_batch):
        chunk = order[start : start + max_batch]
        started = time.perf_counter()
        got = call([texts[i] for i in chunk])
        share = (time.perf_counter() - started) / len(chunk)
        for i, answer in zip(chunk, got, strict=True):
            answers[i], seconds[i] = answer, share
    return answers, seconds
