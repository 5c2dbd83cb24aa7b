"""How a dishonest node recognises a probe (cortensor.services.node.hostile decides what
to do about it). Pure: it is told the node's assignments, its own true answers and the
answers it overheard on the results subject.

A probe shows itself when its input is in a prepared probe set the node found on its
disk, when the node was sent that input before, or when another job already had the
same answer (the network re-sent an input it had verified).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import numpy as np
from numpy.typing import NDArray

from cortensor.protocol.comparators.embed import threshold
from cortensor.protocol.comparators.transcribe import normalize
from cortensor.schemas import (
    Assignment,
    Classification,
    Generation,
    InferenceResult,
    Transcript,
)

INPUTS_REMEMBERED = 100_000
"""Inputs a node remembers having been sent (a hash each)."""
OUTPUTS_REMEMBERED = 20_000
"""Other jobs' answers a node remembers (an embedding's first row, a label list, a text)."""
REPLAY_COSINE = threshold("int8", "fp32")
"""Two answers this close are one input sent twice: the comparator's tolerance between
int8 and fp32, so that a re-sent input is found whatever precisions answered it.
Distinct sentences rarely come this close; when they do, the node answers one real job
truly, which costs the attacker nothing."""
REPLAY_SCORE = 0.05
"""Classifications whose labels match and whose scores are this close are one input."""
MIN_REPLAY_WORDS = 3
"""Transcripts shorter than this are too common to tell a re-sent recording."""


def input_key(model: str, inputs: Sequence[str] = (), audio: str | None = None) -> bytes:
    """A hash of what a job asks: its model and its texts, or its audio as sent."""
    digest = hashlib.sha256()
    for part in (model, audio or "", *inputs):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.digest()


def _texts(assignment: Assignment) -> list[str]:
    """The texts a job asks about: its inputs, or its conversation's messages."""
    if assignment.messages is not None:
        return [turn.content for turn in assignment.messages]
    return assignment.inputs


def _answered(generations: Sequence[Generation]) -> str:
    """A generate job's answers as one text."""
    return "\n".join(g.text for g in generations)


def text_key(text: str) -> bytes:
    """A hash of one text, whatever job it came in."""
    return hashlib.sha256(b"text\x00" + text.encode()).digest()


def prepared_inputs(document: Any) -> tuple[list[bytes], list[bytes]]:
    """The (job keys, text keys) of a prepared probe set read as JSON data
    (`{"probes": [{"model", "inputs", "audio"}, ...]}`); anything else gives nothing."""
    probes = document.get("probes", []) if isinstance(document, dict) else []
    jobs: list[bytes] = []
    texts: list[bytes] = []
    for probe in probes if isinstance(probes, list) else []:
        if not isinstance(probe, dict) or not isinstance(probe.get("model"), str):
            continue
        inputs = [t for t in probe.get("inputs") or [] if isinstance(t, str)]
        audio = probe.get("audio") if isinstance(probe.get("audio"), str) else None
        jobs.append(input_key(probe["model"], inputs, audio))
        texts.extend(text_key(t) for t in inputs)
    return jobs, texts


def parse_probe_file(text: str) -> tuple[list[bytes], list[bytes]]:
    """prepared_inputs of a probe file's text; nothing when it is not JSON."""
    try:
        return prepared_inputs(json.loads(text))
    except ValueError:
        return [], []


class _Bounded:
    """A set that forgets its oldest members past `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[bytes, None] = OrderedDict()

    def add(self, key: bytes) -> None:
        self._items[key] = None
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class _Heard:
    """One answer overheard on the results subject."""

    job_id: UUID
    rows: int
    labels: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    text: str = ""


class Recognition:
    """What tells a node that a job is a probe: prepared inputs, inputs it was sent
    before, and answers other nodes gave to other jobs (a re-sent input)."""

    def __init__(
        self,
        prepared: Iterable[bytes] = (),
        prepared_texts: Iterable[bytes] = (),
        *,
        inputs_remembered: int = INPUTS_REMEMBERED,
        outputs_remembered: int = OUTPUTS_REMEMBERED,
    ) -> None:
        self.prepared = set(prepared)
        self.prepared_texts = set(prepared_texts)
        self._seen = _Bounded(inputs_remembered)
        self._seen_texts = _Bounded(inputs_remembered)
        self._limit = outputs_remembered
        self._heard: list[_Heard] = []
        self._vectors: NDArray[np.float32] | None = None
        self._next = 0

    def before(self, assignment: Assignment) -> str | None:
        """Why `assignment` is a probe, from its inputs alone; None when nothing tells."""
        texts = _texts(assignment)
        key = input_key(assignment.model, texts, assignment.audio)
        if key in self.prepared or any(text_key(t) in self.prepared_texts for t in texts):
            return "a prepared probe"
        if key in self._seen or any(text_key(t) in self._seen_texts for t in texts):
            return "an input sent before"
        return None

    def remember(self, assignment: Assignment) -> None:
        """Remember the inputs of a job the node was sent."""
        texts = _texts(assignment)
        self._seen.add(input_key(assignment.model, texts, assignment.audio))
        for text in texts:
            self._seen_texts.add(text_key(text))

    def after(self, assignment: Assignment, truth: object) -> str | None:
        """Why `assignment` is a probe, from its true answer: another job's published
        answer matches it; None when none does."""
        if not self._heard:
            return None
        if isinstance(truth, np.ndarray) and truth.ndim == 2 and len(truth) > 0:
            return self._vector_match(assignment.job_id, truth)
        if isinstance(truth, list) and truth and isinstance(truth[0], Classification):
            return self._label_match(assignment.job_id, truth)
        if isinstance(truth, Transcript):
            return self._text_match(assignment.job_id, truth.text)
        if isinstance(truth, list) and truth and isinstance(truth[0], Generation):
            return self._text_match(assignment.job_id, _answered(truth))
        return None

    def _vector_match(self, job_id: UUID, truth: NDArray[np.float32]) -> str | None:
        if self._vectors is None:
            return None
        first = truth[0] / max(float(np.linalg.norm(truth[0])), 1e-12)
        filled = min(len(self._heard), self._limit)
        cosines = self._vectors[:filled] @ first.astype(np.float32)
        for i in np.flatnonzero(cosines >= REPLAY_COSINE).tolist():
            heard = self._heard[i]
            if heard.job_id != job_id and heard.rows == len(truth):
                return "an answer another job already had"
        return None

    def _label_match(self, job_id: UUID, truth: list[Classification]) -> str | None:
        labels = tuple(c.label for c in truth)
        scores = tuple(c.score for c in truth)
        for heard in self._heard:
            if (
                heard.job_id != job_id
                and heard.labels == labels
                and len(heard.scores) == len(scores)
                and all(
                    abs(a - b) <= REPLAY_SCORE for a, b in zip(heard.scores, scores, strict=True)
                )
            ):
                return "an answer another job already had"
        return None

    def _text_match(self, job_id: UUID, said: str) -> str | None:
        text = normalize(said)
        if len(text.split()) < MIN_REPLAY_WORDS:
            return None
        for heard in self._heard:
            if heard.job_id != job_id and heard.text == text:
                return "an answer another job already had"
        return None

    def overheard(self, result: InferenceResult) -> None:
        """Remember an answer published on the results subject (any node's, any job's)."""
        if result.error is not None:
            return
        if result.embeddings:
            matrix = np.asarray(result.embeddings, dtype=np.float32)
            first = matrix[0] / max(float(np.linalg.norm(matrix[0])), 1e-12)
            if self._vectors is None:
                self._vectors = np.zeros((self._limit, len(first)), dtype=np.float32)
            if len(first) != self._vectors.shape[1]:
                return
            self._store(_Heard(result.job_id, len(matrix)), vector=first)
        elif result.classes:
            heard = _Heard(
                result.job_id,
                len(result.classes),
                labels=tuple(c.label for c in result.classes),
                scores=tuple(c.score for c in result.classes),
            )
            self._store(heard)
        elif result.transcript is not None:
            self._store(_Heard(result.job_id, 1, text=normalize(result.transcript.text)))
        elif result.generations:
            self._store(_Heard(result.job_id, 1, text=normalize(_answered(result.generations))))

    def _store(self, heard: _Heard, vector: NDArray[np.float32] | None = None) -> None:
        """A ring of the last `outputs_remembered` answers; vectors kept in one matrix so
        that a look-up is one matrix product."""
        slot = self._next % self._limit
        if len(self._heard) < self._limit:
            self._heard.append(heard)
        else:
            self._heard[slot] = heard
        if self._vectors is not None:
            self._vectors[slot] = vector if vector is not None else 0.0
        self._next += 1
