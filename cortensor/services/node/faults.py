"""Dishonest behaviour on purpose, for tests, demos and the simulation (`cortensor node --fault`).

Modes that answer wrongly: random, lazy, noisy, intermittent (random on a small share of
jobs) and colluding (a group that agrees on its wrong answers). Modes that misbehave
otherwise: slow (answers after the deadline) and crash (the process dies mid-task).
Modes that adapt (cortensor.services.node.hostile decides, cortensor.services.node.lookout
listens): probe-aware (random answers on every job it cannot recognise as a probe),
adaptive (the same, and only when it believes no peer checks it) and sybil (a group's
shared wrong answer on every job it cannot recognise as a probe, and a fresh node id
once it has been caught).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol, get_args

import numpy as np
from numpy.typing import NDArray

from cortensor.errors import BadInput
from cortensor.protocol.comparators.transcribe import normalize
from cortensor.schemas import (
    MAX_DEADLINE_S,
    Assignment,
    Classification,
    Generation,
    LabelScore,
    Segment,
    Transcript,
)

FaultMode = Literal[
    "random",
    "lazy",
    "noisy",
    "colluding",
    "slow",
    "intermittent",
    "crash",
    "probe-aware",
    "adaptive",
    "sybil",
]
FAULT_MODES: tuple[FaultMode, ...] = get_args(FaultMode)
ADAPTING_MODES: tuple[FaultMode, ...] = ("probe-aware", "adaptive", "sybil")
"""The modes that decide job by job, from what they overhear, whether to cheat."""
GROUP_MODES: tuple[FaultMode, ...] = ("colluding", "sybil")
"""The modes whose members share their wrong answers (`--fault-group`)."""
WRONG_ANSWER_MODES: tuple[FaultMode, ...] = (
    "random",
    "lazy",
    "noisy",
    "colluding",
    "intermittent",
    *ADAPTING_MODES,
)
"""The modes whose fault is a wrong answer; slow and crash answer honestly, or never."""

INTERMITTENT_RATE = 0.1
"""The share of jobs an intermittent node answers wrongly unless told otherwise."""
SLOW_MARGIN_S = 2.0
"""How long past its deadline a slow node answers: the router re-routes an assignment at
its first sweep after the deadline (every 0.25 s by default), well within this."""
SLOW_MAX_S = MAX_DEADLINE_S + SLOW_MARGIN_S
"""The longest a slow node holds a result, whatever deadline an assignment claims."""
CRASH_EXIT_CODE = 70
"""The exit status of a node that crashes on purpose (EX_SOFTWARE)."""

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
COLLUDING_SCORES = (0.5, 0.95)
"""The range of a colluding group's top score: confident, as a softmax's top often is,
and above the scores of the rest of its top list, which share what is left."""
LAZY_ANSWER = "I don't know."
COLLUDING_WORDS = 24
"""The length of a colluding group's answer to a prompt, in words."""
WORDS_PER_S = 2.5
"""The speech rate of a colluding transcript. Its length follows the audio rather than the
true transcript, which may differ by a word between members of different precisions."""


def _unit_rows(matrix: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: NDArray[np.float32] = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


def _foreign_words(words: Sequence[str]) -> list[str]:
    seen = set(words)
    foreign = [w for w in VOCABULARY if w not in seen]
    return foreign or ["x" * (max(len(w) for w in seen) + 1)]


def default_rate(mode: FaultMode) -> float:
    """The share of jobs a mode strikes when no rate is given."""
    return INTERMITTENT_RATE if mode == "intermittent" else 1.0


def option_problem(
    mode: str | None,
    rate: float | None,
    group: str | None,
    window_ms: float | None = None,
    trust_after: int | None = None,
    coordinate: bool = False,
) -> str | None:
    """What is wrong with a node's `--fault`, `--fault-rate`, `--fault-group`,
    `--fault-window-ms`, `--fault-trust-after` and `--fault-coordinate`, said so that the
    user can fix it; None when they go together."""
    if coordinate and mode != "sybil":
        return "--fault-coordinate goes with --fault sybil only"
    if mode != "adaptive" and trust_after is not None:
        return "--fault-trust-after goes with --fault adaptive only"
    if window_ms is not None and not (mode == "adaptive" or coordinate):
        return "--fault-window-ms goes with --fault adaptive, or sybil with --fault-coordinate"
    if window_ms is not None and not 0.0 <= window_ms <= 10_000.0:
        return "--fault-window-ms must be between 0 and 10000"
    if trust_after is not None and trust_after < 0:
        return "--fault-trust-after must be 0 or more"
    if mode is None:
        return "--fault-group needs --fault colluding or sybil" if group is not None else None
    if mode not in FAULT_MODES:
        return f"--fault must be one of {', '.join(FAULT_MODES)}"
    if rate is not None and not 0.0 <= rate <= 1.0:
        return "--fault-rate must be between 0 and 1"
    if mode in GROUP_MODES and not group:
        return (
            f"--fault {mode} needs --fault-group NAME (the nodes started with one group"
            " name give the same wrong answers)"
        )
    if mode not in GROUP_MODES and group is not None:
        return f"--fault-group goes with --fault colluding or sybil only, not with --fault {mode}"
    return None


def slow_sleep_s(deadline_at: datetime, now: datetime) -> float:
    """How long a slow node holds an answer computed at `now`: until SLOW_MARGIN_S past the
    deadline (nothing when that is past already), and never more than SLOW_MAX_S."""
    wait = (deadline_at - now).total_seconds() + SLOW_MARGIN_S
    return min(max(wait, 0.0), SLOW_MAX_S)


class WrongAnswers(Protocol):
    """What turns a job's true answer into a wrong one of the same shape, task by task."""

    def corrupt(self, embeddings: NDArray[np.float32]) -> NDArray[np.float32]:
        """Wrong embeddings."""
        ...

    def corrupt_classes(
        self, classes: Sequence[Classification], labels: Sequence[str]
    ) -> list[Classification]:
        """Wrong classifications; `labels` are the model's (may be empty)."""
        ...

    def corrupt_transcript(self, transcript: Transcript) -> Transcript:
        """A wrong transcript."""
        ...

    def corrupt_generations(self, generations: Sequence[Generation]) -> list[Generation]:
        """Wrong answers to a generate job's prompts."""
        ...


class Cover(Protocol):
    """What an adapting node consults before cheating (lookout.Lookout in a live node)."""

    def cheats(self, assignment: Assignment, truth: object) -> bool:
        """Whether to answer `assignment` wrongly, given its true answer `truth` (an
        embedding matrix, a list of Classification, or a Transcript)."""
        ...


class Fault:
    """A node's dishonesty: which jobs it strikes (a share `rate` of them) and what it does.

    Wrong answers: random, a made-up answer (random unit vectors; another label with a
    random score; random words, as many as the true transcript has). lazy: one constant
    answer (one vector; the model's first label at 1.0; the transcript "the"). noisy: the
    true answer spoiled (Gaussian noise to cosine about 0.6; the top score moved by 0.3;
    half the words replaced or dropped). intermittent: random's answers on a share of jobs
    that defaults to INTERMITTENT_RATE (`random` at that rate behaves the same).
    colluding: the Collusion of `group`, the same wrong answer from every member; which
    jobs it strikes is decided by the job too, so that the members strike together. Each
    is far outside its comparator's tolerance; only a lazy answer can be right by chance,
    when the truth is that constant.

    Other faults: slow, the true answer held until past the deadline (slow_sleep_s), so
    that the router re-routes the replica and charges the node `timed_out`. crash: the
    node computes, then exits with CRASH_EXIT_CODE before publishing.

    Adapting: probe-aware and adaptive give random's answers, sybil its group's Collusion,
    but only on the jobs their `cover` lets them cheat on (all struck jobs without one).
    """

    def __init__(
        self,
        mode: FaultMode,
        rate: float | None = None,
        seed: int | None = None,
        *,
        group: str | None = None,
        cover: Cover | None = None,
    ) -> None:
        if mode not in FAULT_MODES:
            raise BadInput(f"unknown fault mode {mode!r}; use one of {', '.join(FAULT_MODES)}")
        rate = default_rate(mode) if rate is None else rate
        if not 0.0 <= rate <= 1.0:
            raise BadInput("fault rate must be between 0 and 1")
        if mode in GROUP_MODES and not group:
            raise BadInput(f"{mode} needs a group: the name its members share")
        if mode not in GROUP_MODES and group is not None:
            raise BadInput(f"a fault group goes with colluding or sybil only, not with {mode}")
        if cover is not None and mode not in ADAPTING_MODES:
            raise ValueError(f"only {' and '.join(ADAPTING_MODES)} consult a cover, not {mode}")
        self.mode, self.rate, self.group, self.cover = mode, rate, group, cover
        self._rng = random.Random(seed)
        self._np = np.random.default_rng(seed)

    def strikes(self) -> bool:
        """Whether this job is struck (drawn at `rate`)."""
        return self._rng.random() < self.rate

    def wrong_answers(self, assignment: Assignment, truth: object = None) -> WrongAnswers | None:
        """How to answer this assignment wrongly; None to answer it truly. `truth`, the
        true answer, is what an adapting node's cover weighs."""
        if self.cover is not None and not self.cover.cheats(assignment, truth):
            return None
        if self.group is not None:  # colluding, sybil
            collusion = Collusion(self.group, assignment)
            return collusion if collusion.share < self.rate else None
        if self.mode in ("slow", "crash"):
            return None
        return self if self.strikes() else None

    def delays(self) -> bool:
        """Whether a slow node holds this job's answer past the deadline."""
        return self.mode == "slow" and self.strikes()

    def crashes(self) -> bool:
        """Whether a crashing node dies on this job."""
        return self.mode == "crash" and self.strikes()

    def corrupt(self, embeddings: NDArray[np.float32]) -> NDArray[np.float32]:
        """A wrong answer of the same shape as the true one."""
        n, dim = embeddings.shape
        if self.mode == "lazy":
            constant = np.ones((1, dim), dtype=np.float32)
            return _unit_rows(np.repeat(constant, n, axis=0))
        if self.mode == "noisy":
            noise = self._np.standard_normal((n, dim)).astype(np.float32) * (1.3 / np.sqrt(dim))
            return _unit_rows(embeddings + noise)
        return _unit_rows(self._np.standard_normal((n, dim)).astype(np.float32))

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
        if self.mode == "lazy":
            constant = labels[0] if labels else LAZY_LABEL
            top = [LabelScore(label=constant, score=1.0)]
            top += [LabelScore(label=name, score=0.0) for name in labels[1:k]]
            return Classification(label=constant, score=1.0, top=top)
        if self.mode == "noisy":
            # Away from the nearer bound, so that the shift is never clipped short.
            shifted = truth.score + NOISY_SHIFT if truth.score <= 0.5 else truth.score - NOISY_SHIFT
            score = min(1.0, max(0.0, shifted))
            top = [
                LabelScore(label=t.label, score=score) if t.label == truth.label else t
                for t in truth.top
            ]
            return Classification(label=truth.label, score=score, top=top)
        others = [label for label in pool if label != truth.label] or [f"not-{truth.label}"]
        label, score = self._rng.choice(others), self._rng.random()
        rest = [name for name in pool if name != label]
        rest = self._rng.sample(rest, min(k - 1, len(rest)))
        scores = sorted((self._rng.uniform(0.0, score) for _ in rest), reverse=True)
        top = [LabelScore(label=label, score=score)]
        top += [LabelScore(label=n, score=s) for n, s in zip(rest, scores, strict=True)]
        return Classification(label=label, score=score, top=top)

    def corrupt_transcript(self, transcript: Transcript) -> Transcript:
        """A wrong transcript of the same audio (language and duration kept)."""
        words = normalize(transcript.text).split()
        foreign = _foreign_words(words)
        if self.mode == "lazy":
            text = LAZY_TEXT
        elif self.mode == "noisy":
            text = " ".join(self._spoil(words, foreign))
        else:
            text = " ".join(self._rng.choice(foreign) for _ in range(max(1, len(words))))
        return _retold(transcript, text)

    def corrupt_generations(self, generations: Sequence[Generation]) -> list[Generation]:
        """lazy: one short constant answer; noisy: each answer cut to its first half (a
        node saving the rest of the work); random: foreign words, as many as the truth's."""
        wrong: list[Generation] = []
        for truth in generations:
            if self.mode == "lazy":
                wrong.append(Generation(text=LAZY_ANSWER, tokens=[], finish_reason="stop"))
            elif self.mode == "noisy":
                wrong.append(_cut(truth))
            else:
                words = truth.text.split()
                foreign = _foreign_words(normalize(truth.text).split())
                text = " ".join(self._rng.choice(foreign) for _ in range(max(1, len(words))))
                wrong.append(Generation(text=text, tokens=[], finish_reason="stop"))
        return wrong

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


def job_digest(group: str, assignment: Assignment) -> bytes:
    """A sha256 of what every replica of a job shares: its task, model and inputs (texts,
    or the audio as sent), with the colluding group's name."""
    digest = hashlib.sha256()
    fields = (group, assignment.task, assignment.model, assignment.audio or "", *assignment.inputs)
    for text in fields:
        data = text.encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.digest()


class Collusion:
    """The wrong answers a colluding group gives to one job.

    Every member draws them from one generator seeded by job_digest, so that the members
    agree with one another in any process, whatever their precision, and disagree with
    honest nodes. The answers depend on a member's true answer only so far as they avoid
    it: unit vectors at random (near-orthogonal to the truth); another label than the true
    one with a confident score, the rest of the top list sharing what is left; words that
    the true transcript does not hold, as many as the audio's length suggests.
    """

    def __init__(self, group: str, assignment: Assignment) -> None:
        digest = job_digest(group, assignment)
        self.share = int.from_bytes(digest[:8], "big") / 2**64
        """Where the job falls in [0, 1): the group strikes the jobs below its rate."""
        self._np = np.random.default_rng(int.from_bytes(digest[8:], "big"))

    def corrupt(self, embeddings: NDArray[np.float32]) -> NDArray[np.float32]:
        """Random unit vectors of the true shape."""
        return _unit_rows(self._np.standard_normal(embeddings.shape).astype(np.float32))

    def corrupt_classes(
        self, classes: Sequence[Classification], labels: Sequence[str]
    ) -> list[Classification]:
        """Another label than each true one; from the model's labels when it has them."""
        named = {c.label for c in classes} | {t.label for c in classes for t in c.top}
        pool = list(labels) or sorted(named)
        return [self._wrong_class(c, pool) for c in classes]

    def _wrong_class(self, truth: Classification, pool: Sequence[str]) -> Classification:
        # As many draws whatever the truth, so that members whose true labels differ (a
        # near-tie decided differently by two precisions) still draw the same answer.
        i = int(self._np.integers(len(pool)))
        label = pool[i] if pool[i] != truth.label else pool[(i + 1) % len(pool)]
        if label == truth.label:  # the only label there is
            label = f"not-{truth.label}"
        score = float(self._np.uniform(*COLLUDING_SCORES))
        others = [name for name in pool if name != label]
        k = min(max(1, len(truth.top)) - 1, len(others))
        picked: list[int] = self._np.choice(len(others), size=k, replace=False).tolist()
        shares: list[float] = sorted(self._np.dirichlet(np.ones(k)).tolist(), reverse=True)
        top = [LabelScore(label=label, score=score)]
        top += [
            LabelScore(label=others[j], score=(1.0 - score) * share)
            for j, share in zip(picked, shares, strict=True)
        ]
        return Classification(label=label, score=score, top=top)

    def corrupt_transcript(self, transcript: Transcript) -> Transcript:
        """Words not in the true transcript, about as many as are spoken in its audio."""
        true_words = set(normalize(transcript.text).split())
        foreign = _foreign_words(sorted(true_words))
        n = max(1, round(max(0.0, transcript.duration_s) * WORDS_PER_S))
        words = [
            VOCABULARY[i] if VOCABULARY[i] not in true_words else foreign[i % len(foreign)]
            for i in self._np.integers(len(VOCABULARY), size=n).tolist()
        ]
        return _retold(transcript, " ".join(words))

    def corrupt_generations(self, generations: Sequence[Generation]) -> list[Generation]:
        """COLLUDING_WORDS vocabulary words drawn for the job, for each answer: the same
        for every member, whatever their own answers' lengths."""
        return [
            Generation(
                text=" ".join(
                    VOCABULARY[i]
                    for i in self._np.integers(len(VOCABULARY), size=COLLUDING_WORDS).tolist()
                ),
                tokens=[],
                finish_reason="stop",
            )
            for _ in generations
        ]


def _cut(truth: Generation) -> Generation:
    """The first half of an answer, as if the model had ended its turn there."""
    half = len(truth.tokens) // 2
    words = truth.text.split()
    return Generation(
        text=" ".join(words[: len(words) // 2]), tokens=truth.tokens[:half], finish_reason="stop"
    )


def _retold(transcript: Transcript, text: str) -> Transcript:
    """`transcript` with another text, in one segment (language and duration kept)."""
    end = max(0.0, transcript.duration_s)
    return Transcript(
        text=text,
        language=transcript.language,
        duration_s=transcript.duration_s,
        segments=[Segment(start=0.0, end=end, text=text)],
    )
