"""Dishonest behaviour on purpose, for tests and demos (`cortensor node --fault`)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from cortensor.comparators.transcribe import normalize
from cortensor.schemas import Classification, LabelScore, Segment, Transcript

FaultMode = Literal["random", "lazy", "noisy"]
FAULT_MODES: tuple[FaultMode, ...] = ("random", "lazy", "noisy")

VOCABULARY: tuple[str, ...] = (
    "zebra", "quartz", "violin", "glacier", "cactus", "lantern", "nebula", "walrus",
    "saffron", "tundra", "harpoon", "origami", "pelican", "marble", "jigsaw", "kayak",
    "lobster", "meteor", "nutmeg", "orchid", "parsnip", "quiver", "raccoon", "sapphire",
    "trombone", "volcano", "waffle", "yodel", "zeppelin", "banjo", "cobalt", "dynamo",
)  # fmt: skip
"""Words a wrong transcript is made of; those that the true transcript holds are left out,
so that every made-up word counts as an error."""
LAZY_TEXT = "the"
LAZY_LABEL = "unknown"
"""What a lazy classifier answers when it does not even know the model's labels."""
NOISY_SHIFT = 0.3


def _unit_rows(matrix: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: NDArray[np.float32] = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def _foreign_words(words: Sequence[str]) -> list[str]:
    seen = set(words)
    foreign = [w for w in VOCABULARY if w not in seen]
    return foreign or ["x" * (max(len(w) for w in seen) + 1)]


class Fault:
    """Replaces a fraction `rate` of a node's answers with wrong ones.

    random: a made-up answer (random unit vectors; another label with a random score;
    random words, as many as the true transcript has). lazy: one constant answer (one
    vector; the model's first label at 1.0; the transcript "the"). noisy: the true answer
    spoiled (Gaussian noise to cosine about 0.6; the top score moved by 0.3; half the
    words replaced or dropped). Each is far outside its comparator's tolerance; only a
    lazy answer can be right by chance, when the truth is that constant.
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

    def corrupt_classes(
        self, classes: Sequence[Classification], labels: Sequence[str]
    ) -> list[Classification]:
        """Wrong classifications, one per true one; `labels` are the model's (may be empty)."""
        pool = list(
            dict.fromkeys(
                [*labels, *(c.label for c in classes), *(t.label for c in classes for t in c.top)]
            )
        )
        return [self._wrong_class(c, labels, pool) for c in classes]

    def _wrong_class(
        self, truth: Classification, labels: Sequence[str], pool: Sequence[str]
    ) -> Classification:
        k = max(1, len(truth.top))
        if self.mode == "random":
            others = [label for label in pool if label != truth.label] or [f"not-{truth.label}"]
            label, score = self._rng.choice(others), self._rng.random()
            rest = [name for name in pool if name != label]
            rest = self._rng.sample(rest, min(k - 1, len(rest)))
            scores = sorted((self._rng.uniform(0.0, score) for _ in rest), reverse=True)
            top = [LabelScore(label=label, score=score)]
            top += [LabelScore(label=n, score=s) for n, s in zip(rest, scores, strict=True)]
            return Classification(label=label, score=score, top=top)
        if self.mode == "lazy":
            constant = labels[0] if labels else LAZY_LABEL
            top = [LabelScore(label=constant, score=1.0)]
            top += [LabelScore(label=name, score=0.0) for name in labels[1:k]]
            return Classification(label=constant, score=1.0, top=top)
        # Away from the nearer bound, so that the shift is never clipped short.
        score = truth.score + NOISY_SHIFT if truth.score <= 0.5 else truth.score - NOISY_SHIFT
        score = min(1.0, max(0.0, score))
        top = [
            LabelScore(label=t.label, score=score) if t.label == truth.label else t
            for t in truth.top
        ]
        return Classification(label=truth.label, score=score, top=top)

    def corrupt_transcript(self, transcript: Transcript) -> Transcript:
        """A wrong transcript of the same audio (language and duration kept)."""
        words = normalize(transcript.text).split()
        foreign = _foreign_words(words)
        if self.mode == "random":
            text = " ".join(self._rng.choice(foreign) for _ in range(max(1, len(words))))
        elif self.mode == "lazy":
            text = LAZY_TEXT
        else:
            text = " ".join(self._spoil(words, foreign))
        end = max(0.0, transcript.duration_s)
        return Transcript(
            text=text,
            language=transcript.language,
            duration_s=transcript.duration_s,
            segments=[Segment(start=0.0, end=end, text=text)],
        )

    def _spoil(self, words: list[str], foreign: list[str]) -> list[str]:
        """Half the words (rounded up, at least one) replaced by foreign words or dropped.

        The kept words are a subsequence of the truth and no added word occurs in it, so
        at least that many edits remain: a word error rate of 0.5 or more.
        """
        if not words:
            return [self._rng.choice(foreign)]
        spoiled = set(self._rng.sample(range(len(words)), math.ceil(len(words) / 2)))
        out: list[str] = []
        for i, word in enumerate(words):
            if i not in spoiled:
                out.append(word)
            elif self._rng.random() < 0.5:
                out.append(self._rng.choice(foreign))
        return out
