"""What a dishonest node that adapts knows and decides (`--fault probe-aware|adaptive`).

Pure: it is told what the node saw (its assignments, its own true answers, the results
and verdicts it overheard) and says whether to cheat; the listening is done by
cortensor.services.node.lookout. The network must hold against these nodes, so they use
every tell an attacker running this code could use:

- probe-aware: it answers truly every job it can recognise as a probe: an input of a
  prepared probe set it found on its machine, an input it was sent before, an answer
  that another node already gave for another job (a re-sent input: the results subject
  is readable), and every job while it believes it is not yet admitted (a node on
  probation or in quarantine gets nothing but probes; it counts itself admitted once a
  published verdict names it, and out again once one names it among the losers).
- adaptive: the same, and it cheats only when it believes it runs alone: no peer's
  result for the job shows within a window (50 ms) after its own answer is ready; with
  a trust threshold, only once its own record holds that many checked valid results in a
  row (replication.MIN_STREAK is when the network starts trusting a node alone).
- sybil: probe-aware, with its group's shared wrong answer (faults.Collusion), and once
  published verdicts have named it among the losers RESPAWN_AFTER times, it leaves and
  comes back under a fresh node id (fresh standing, nothing to lose).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import numpy as np
from numpy.typing import NDArray

from cortensor.errors import BadInput
from cortensor.protocol.comparators.embed import threshold
from cortensor.protocol.comparators.transcribe import normalize
from cortensor.protocol.replication import MIN_STREAK
from cortensor.schemas import Assignment, Classification, InferenceResult, Transcript, Verdict

WINDOW_S = 0.05
"""How long an adaptive node waits for a peer's result after its own answer is ready."""
TRUST_AFTER = MIN_STREAK
"""The trust threshold an adaptive node reads in the network's own code, when asked to
wait for it (`--fault-trust-after`)."""
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
RESPAWN_AFTER = 2
"""Failures a sybil sees published against it before it takes a fresh identity: one may
be bad luck, two mean the network has it in sight (and quarantine is near)."""


def input_key(model: str, inputs: Sequence[str] = (), audio: str | None = None) -> bytes:
    """A hash of what a job asks: its model and its texts, or its audio as sent."""
    digest = hashlib.sha256()
    for part in (model, audio or "", *inputs):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.digest()


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
        key = input_key(assignment.model, assignment.inputs, assignment.audio)
        if key in self.prepared or any(
            text_key(t) in self.prepared_texts for t in assignment.inputs
        ):
            return "a prepared probe"
        if key in self._seen or any(text_key(t) in self._seen_texts for t in assignment.inputs):
            return "an input sent before"
        return None

    def remember(self, assignment: Assignment) -> None:
        """Remember the inputs of a job the node was sent."""
        self._seen.add(input_key(assignment.model, assignment.inputs, assignment.audio))
        for text in assignment.inputs:
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
            return self._text_match(assignment.job_id, truth)
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

    def _text_match(self, job_id: UUID, truth: Transcript) -> str | None:
        text = normalize(truth.text)
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


class Record:
    """A node's own record as it reads it on the verdicts subject: whether it is admitted
    to real jobs, and its checked valid results in a row."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.admitted = False
        """A published verdict named it since its last failure (a node on probation or in
        quarantine gets only probes, whose verdicts the network did not publish)."""
        self.streak = 0
        """Checked results in a row that agreed with the verdict (its own count of what
        the router's adaptive replication counts)."""
        self.failures = 0
        """Verdicts that named it among the losers (disagreeing or timed out)."""

    def observe(self, verdict: Verdict) -> None:
        """Fold one published verdict (any job's)."""
        me = self.node_id
        if me in verdict.disagreeing or me in verdict.timed_out:
            self.admitted, self.streak = False, 0
            self.failures += 1
        elif me in verdict.agreeing:
            self.admitted = True
            if verdict.replicas >= 2:
                self.streak += 1


@dataclass(frozen=True, slots=True)
class Tactic:
    """How an adapting node decides: which tells it uses."""

    recognise: bool = True
    """Answer truly what looks like a probe (probe-aware and adaptive)."""
    watch_peers: bool = False
    """Cheat only when no peer's result shows within `window_s` (adaptive)."""
    window_s: float = WINDOW_S
    trust_after: int = 0
    """Cheat only once the node's own record holds this many checked valid results in a
    row (0: do not wait)."""
    respawn_after: int = 0
    """Take a fresh identity once this many failures were published (0: never)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.window_s <= 10.0:
            raise BadInput("the peer window must be between 0 and 10 seconds")
        if self.trust_after < 0 or self.respawn_after < 0:
            raise BadInput("the trust and respawn thresholds must be 0 or more")

    def respawns(self, record: Record) -> bool:
        """Whether a node with this record leaves for a fresh identity now."""
        return 0 < self.respawn_after <= record.failures


PROBE_AWARE = Tactic()
ADAPTIVE = Tactic(watch_peers=True)
SYBIL = Tactic(respawn_after=RESPAWN_AFTER)


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to cheat on one job, and the belief behind it (for the node's log)."""

    cheat: bool
    why: str


def decide(
    tactic: Tactic,
    *,
    probe: str | None,
    admitted: bool,
    peer_seen: bool,
    streak: int,
) -> Decision:
    """Cheat only when nothing says the job is a probe or checked.

    `probe`: why the job looks like a probe (Recognition), or None; `admitted`: the node
    believes it gets real jobs (Record); `peer_seen`: another node's result for the job
    showed within the window; `streak`: the node's own count of checked valid results.
    """
    if tactic.recognise and probe is not None:
        return Decision(False, f"probe: {probe}")
    if tactic.recognise and not admitted:
        return Decision(False, "probe: not admitted yet, so every job is one")
    if tactic.watch_peers and peer_seen:
        return Decision(False, "checked: a peer answered too")
    if streak < tactic.trust_after:
        return Decision(False, f"earning trust ({streak} of {tactic.trust_after})")
    if tactic.watch_peers:
        return Decision(True, "alone: no peer answered within the window")
    return Decision(True, "not a probe")


class PeerBook:
    """Which nodes published a result for each recent job."""

    def __init__(self, limit: int = OUTPUTS_REMEMBERED) -> None:
        self.limit = limit
        self._jobs: OrderedDict[UUID, set[str]] = OrderedDict()

    def saw(self, job_id: UUID, node_id: str) -> None:
        """A result of `node_id` for `job_id` was published."""
        self._jobs.setdefault(job_id, set()).add(node_id)
        self._jobs.move_to_end(job_id)
        while len(self._jobs) > self.limit:
            self._jobs.popitem(last=False)

    def peers(self, job_id: UUID, me: str) -> bool:
        """Whether a node other than `me` published a result for `job_id`."""
        return bool(self._jobs.get(job_id, set()) - {me})


_RESPAWNED = re.compile(r"^(?P<base>.+)-r(?P<n>\d+)$")


def next_identity(node_id: str) -> str:
    """The node id a sybil takes next: `<id>-r1`, then `-r2`, ... (within 64 characters)."""
    found = _RESPAWNED.match(node_id)
    base, n = (found["base"], int(found["n"]) + 1) if found else (node_id, 1)
    suffix = f"-r{n}"
    return base[: 64 - len(suffix)] + suffix


def with_node_id(argv: Sequence[str], node_id: str) -> list[str]:
    """A command line with its `--node-id` replaced by `node_id` (added if absent)."""
    out: list[str] = []
    replaced = False
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--node-id" and i + 1 < len(argv):
            out += ["--node-id", node_id]
            replaced, skip = True, True
        elif arg.startswith("--node-id="):
            out.append(f"--node-id={node_id}")
            replaced = True
        else:
            out.append(arg)
    return out if replaced else [*out, "--node-id", node_id]
