"""What a dishonest node that adapts knows and decides (`--fault probe-aware|adaptive`).

Pure: it is told what the node saw (its assignments, its own true answers, the results
and verdicts it overheard) and says whether to cheat; the listening is done by
cortensor.services.node.lookout. The network must hold against these nodes, so they use
every tell an attacker running this code could use:

- probe-aware: it answers truly every job it can recognise as a probe
  (cortensor.services.node.recognition: an input of a prepared probe set it found on its
  machine, an input it was sent before, an answer that another node already gave for
  another job, a re-sent input, since the results subject is readable), and every job
  while it believes it is not yet admitted (a node on probation or in quarantine gets
  nothing but probes; it counts itself admitted once a published verdict names it, and
  out again once one names it among the losers).
- adaptive: the same, and it cheats only when it believes it runs alone: no peer's
  result for the job shows within a window (50 ms) after its own answer is ready; with
  a trust threshold, only once its own record holds that many checked valid results in a
  row (replication.MIN_STREAK is when the network starts trusting a node alone).
- sybil: probe-aware, with its group's shared wrong answer (faults.Collusion), and once
  published verdicts have named it among the losers RESPAWN_AFTER times, it leaves and
  comes back under a fresh node id (fresh standing, nothing to lose). Coordinated
  (`--fault-coordinate`), the members tell one another on a side channel which jobs they
  hold, and cheat only where two of them hold one job: a majority of a checked job's
  three replicas, so that they are never outvoted and never caught.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from cortensor.errors import BadInput
from cortensor.protocol.replication import MIN_STREAK
from cortensor.protocol.reputation import ADMIT_PROBES
from cortensor.schemas import Verdict

WINDOW_S = 0.05
"""How long an adaptive node waits for a peer's result after its own answer is ready."""
CREW_WINDOW_S = 0.5
"""How long a coordinated sybil waits to hear that a fellow member holds its job: the
checkers of a job are sent together, but a busy node may start on one later."""
TRUST_AFTER = MIN_STREAK
"""The trust threshold an adaptive node reads in the network's own code, when asked to
wait for it (`--fault-trust-after`)."""
RECENT_JOBS = 20_000
"""Jobs whose results a node keeps track of (who answered them)."""
RESPAWN_AFTER = 2
"""Failures a sybil sees published against it before it takes a fresh identity: one may
be bad luck, two mean the network has it in sight (and quarantine is near)."""


class Record:
    """A node's own record as it reads it on the verdicts subject: whether it is admitted
    to real jobs, and its checked valid results in a row."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.admitted = False
        """A published verdict named it since its last failure (a node on probation or in
        quarantine gets only probes: a network that keeps their verdicts to itself tells
        the node it is not admitted yet)."""
        self.streak = 0
        """Checked results in a row that agreed with the verdict (its own count of what
        the router's adaptive replication counts)."""
        self.failures = 0
        """Verdicts that named it among the losers (disagreeing or timed out)."""
        self.blind = False
        """The server keeps the verdicts from this node (a secured fleet): it can only
        guess its standing from what it answered itself."""
        self.true_answers = 0
        """Jobs answered truly since it last cheated (what a blind node guesses from)."""

    def believes_admitted(self) -> bool:
        """Whether the node takes itself for admitted to real jobs: a published verdict
        said so or, blind, it answered truly as many jobs in a row as admit a node on
        probation (reputation.ADMIT_PROBES, which anyone can read in the code)."""
        return self.admitted or (self.blind and self.true_answers >= ADMIT_PROBES)

    def answered(self, *, cheated: bool) -> None:
        """Count one of its own answers."""
        self.true_answers = 0 if cheated else self.true_answers + 1

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
    coordinate: bool = False
    """Cheat only when a fellow member of the group holds the job too and has not chosen
    to answer truly (waiting up to `window_s` to hear of one, CREW_WINDOW_S for a sybil)."""

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
    mates: bool = False,
) -> Decision:
    """Cheat only when nothing says the job is a probe or checked (or, coordinated, only
    when the group holds a majority of it).

    `probe`: why the job looks like a probe (Recognition), or None; `admitted`: the node
    believes it gets real jobs (Record); `peer_seen`: another node's result for the job
    showed within the window; `streak`: the node's own count of checked valid results;
    `mates`: a fellow member holds the job and has not chosen to answer truly.
    """
    if tactic.recognise and probe is not None:
        return Decision(False, f"probe: {probe}")
    if tactic.recognise and not admitted:
        return Decision(False, "probe: not admitted yet, so every job is one")
    if tactic.watch_peers and peer_seen:
        return Decision(False, "checked: a peer answered too")
    if streak < tactic.trust_after:
        return Decision(False, f"earning trust ({streak} of {tactic.trust_after})")
    if tactic.coordinate:
        if not mates:
            return Decision(False, "outnumbered: no fellow member holds the job")
        return Decision(True, "majority: a fellow member holds the job too")
    if tactic.watch_peers:
        return Decision(True, "alone: no peer answered within the window")
    return Decision(True, "not a probe")


class PeerBook:
    """Which nodes published a result for each recent job."""

    def __init__(self, limit: int = RECENT_JOBS) -> None:
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


Stance = Literal["holding", "cheat", "honest"]
"""What a group member said about a job: it holds it (deciding), or what it decided."""


class Crew:
    """What the members of a coordinated group said about the jobs they hold."""

    def __init__(self, limit: int = RECENT_JOBS) -> None:
        self.limit = limit
        self._jobs: OrderedDict[UUID, dict[str, Stance]] = OrderedDict()

    def heard(self, job_id: UUID, node_id: str, stance: Stance) -> None:
        """A member said `stance` about `job_id` (a decision overrides holding)."""
        said = self._jobs.setdefault(job_id, {})
        if said.get(node_id) in (None, "holding"):
            said[node_id] = stance
        self._jobs.move_to_end(job_id)
        while len(self._jobs) > self.limit:
            self._jobs.popitem(last=False)

    def mates(self, job_id: UUID, me: str) -> bool:
        """Whether another member holds `job_id` and has not chosen to answer truly."""
        said = self._jobs.get(job_id, {})
        return any(node != me and stance != "honest" for node, stance in said.items())


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
