"""Reputation arithmetic over the append-only reputation events. Pure logic.

Each node has a standing overall and one per model, folded from its events in order
(docs/trust.md gives the formulas, the reasons and the simulated figures behind them):

- score: the posterior mean of a Beta(1, 1) prior over time-decayed counts,
  (1 + A) / (2 + A + D + T), where each event weighs 0.5 ** (age / half-life) at the
  time of the node's latest event. Routing weighs nodes by it.
- streak: the run of valid (agreed) results. A wrong answer resets it to 0; a missed
  deadline takes LATE_STREAK_COST off (a late node is unreliable, not shown dishonest).
  Adaptive replication trusts a node with unreplicated jobs by it (BOINC's rule), and
  placement counts a node as established by it.
- suspicion: a one-sided CUSUM of the log-likelihood ratio between "answers wrong at the
  tolerated rate F0" and "cheats at rate F1", fed by answers only (agreed, disagreed);
  quarantine when it reaches SUSPICION_LIMIT. It catches a node that is always wrong
  within 3 checked results and one wrong 10% of the time within about 50.
- lateness: a second, tolerant CUSUM fed by deadlines only (timed_out against an answer
  in time), between "misses LATE_F0 of its deadlines" (an overloaded honest node) and
  "misses LATE_F1" (a node that takes jobs and never answers); quarantine when it
  reaches LATENESS_LIMIT (20 missed deadlines in a row; 5 on probation, where a node has
  no record to weigh). Overload lowers a node's score and streak, so routing sends it
  less, but never counts as cheating.
- trust: probation (new: known-answer probes only) -> active (real jobs) ->
  quarantined (probes only) -> active again after READMIT_PROBES probes in a row, unless
  it was quarantined for wrong answers MAX_OFFENCES times: a repeat offender stays out.

The ledger keeps the same fold in PostgreSQL (migration 0005 replaces the trigger
function `cortensor_fold` of 0003); `cortensor reputation check` recomputes every
standing from the events alone with this module and compares.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

EventKind = Literal["agreed", "disagreed", "timed_out"]
Trust = Literal["probation", "active", "quarantined"]

HALF_LIFE_S = 7 * 24 * 3600.0
"""An event's weight halves every week: a node's record reflects what it does now."""
F0 = 0.01
"""Wrong-answer rate tolerated from an honest node (near-ties across precisions)."""
F1 = 0.10
"""Wrong-answer rate of the cheaters the suspicion test is tuned to catch."""
STEP_FAILED = math.log(F1 / F0)
STEP_VALID = math.log((1 - F1) / (1 - F0))
SUSPICION_LIMIT = math.log(1000.0)
"""Three wrong answers in a row reach it; an honest record drains it back towards 0."""
LATE_F0 = 0.25
"""Share of deadlines an overloaded honest node may miss without suspicion."""
LATE_F1 = 0.95
"""Share of deadlines missed by a node that takes jobs and does not answer them."""
STEP_LATE = math.log(LATE_F1 / LATE_F0)
STEP_ON_TIME = math.log((1 - LATE_F1) / (1 - LATE_F0))
LATENESS_LIMIT = 53.0
"""An active node reaches it with 20 missed deadlines in a row (20 * 1.335); one answer
in time takes 2.7 off. An honest node overloaded for 30 s, which misses every deadline
meanwhile, reached 14 in `cortensor simulate` (3 seeds of 800 honest nodes)."""
PROBATION_LATENESS_LIMIT = 6.0
"""A node on probation, with no record to weigh, reaches it with 5 missed probes in a
row: a node that takes jobs and never answers is quarantined within 5 probes."""
LATE_STREAK_COST = 2
"""What a missed deadline takes off the streak: a node must meet more than two in three
deadlines to build trust, while an honest node's scattered misses (2% of its jobs, more
when overloaded) do not keep it from running jobs alone."""
ADMIT_PROBES = 3
"""Known-answer probes a new node must pass, in a row, before it gets real jobs."""
READMIT_PROBES = 5
"""Probes a quarantined node must pass, in a row, to get real jobs again."""
MAX_OFFENCES = 2
"""Quarantines for wrong answers (a failed check, a wrong probe) after which a node is
never readmitted: one second chance, as BOINC's long-term failure limits a host."""
PRIOR_SCORE = 0.5


@dataclass(frozen=True, slots=True)
class Standing:
    """A node's standing, overall or for one model, after some events."""

    agreed: float = 0.0
    disagreed: float = 0.0
    timed_out: float = 0.0
    """Time-decayed counts, as of `at`."""
    observations: int = 0
    streak: int = 0
    probe_streak: int = 0
    suspicion: float = 0.0
    lateness: float = 0.0
    offences: int = 0
    """Times the node was quarantined for wrong answers."""
    trust: Trust = "probation"
    at: float = 0.0
    """Time of the latest event, in seconds (epoch seconds in the ledger)."""

    @property
    def score(self) -> float:
        """The node's reputation in (0, 1): 0.5 with no record."""
        return (1.0 + self.agreed) / (2.0 + self.agreed + self.disagreed + self.timed_out)

    @property
    def barred(self) -> bool:
        """Quarantined for good: a repeat offender gets no probes and no jobs."""
        return self.trust == "quarantined" and self.offences >= MAX_OFFENCES


def record(standing: Standing, kind: EventKind, at: float, *, probe: bool = False) -> Standing:
    """The standing after one more event at time `at`."""
    decay = 0.5 ** (max(at - standing.at, 0.0) / HALF_LIFE_S) if standing.observations else 1.0
    valid = kind == "agreed"
    late = kind == "timed_out"
    if late:
        suspicion = standing.suspicion
        lateness = standing.lateness + STEP_LATE
        streak = max(standing.streak - LATE_STREAK_COST, 0)
    else:
        suspicion = max(0.0, standing.suspicion + (STEP_VALID if valid else STEP_FAILED))
        lateness = max(0.0, standing.lateness + STEP_ON_TIME)
        streak = standing.streak + 1 if valid else 0
    probe_streak = (standing.probe_streak + 1 if valid else 0) if probe else standing.probe_streak
    after = replace(
        standing,
        agreed=standing.agreed * decay + (1.0 if kind == "agreed" else 0.0),
        disagreed=standing.disagreed * decay + (1.0 if kind == "disagreed" else 0.0),
        timed_out=standing.timed_out * decay + (1.0 if late else 0.0),
        observations=standing.observations + 1,
        streak=streak,
        probe_streak=probe_streak,
        suspicion=suspicion,
        lateness=lateness,
        at=max(at, standing.at),
    )
    return _transition(after, wrong=kind == "disagreed", probe=probe)


def _transition(s: Standing, *, wrong: bool, probe: bool) -> Standing:
    if s.trust == "probation":
        if probe and wrong:
            return replace(s, trust="quarantined", probe_streak=0, offences=s.offences + 1)
        if s.lateness >= PROBATION_LATENESS_LIMIT:
            return replace(s, trust="quarantined", probe_streak=0)
        if s.probe_streak >= ADMIT_PROBES:
            return replace(s, trust="active", probe_streak=0)
        return s
    if s.trust == "active":
        if s.suspicion >= SUSPICION_LIMIT:
            return replace(s, trust="quarantined", probe_streak=0, offences=s.offences + 1)
        if s.lateness >= LATENESS_LIMIT:
            return replace(s, trust="quarantined", probe_streak=0)
        return s
    if s.offences < MAX_OFFENCES and s.probe_streak >= READMIT_PROBES:
        return replace(s, trust="active", probe_streak=0, suspicion=0.0, lateness=0.0, streak=0)
    return s


def fold(
    events: Iterable[tuple[EventKind, float, bool]], start: Standing | None = None
) -> Standing:
    """The standing after (kind, time, probe) events, in order."""
    standing = start or Standing()
    for kind, at, probe in events:
        standing = record(standing, kind, at, probe=probe)
    return standing


@dataclass(frozen=True, slots=True)
class Record:
    """A node's plain counts of reputation events, undecayed (the reports' columns)."""

    agreed: int = 0
    disagreed: int = 0
    timed_out: int = 0

    @property
    def observations(self) -> int:
        """How many events the score rests on."""
        return self.agreed + self.disagreed + self.timed_out


def score(record: Record) -> float:
    """The Beta(1, 1) posterior mean over undecayed counts: the ledger's SQL function
    `cortensor_score`, which the reports show beside the decayed standing."""
    return (record.agreed + 1.0) / (record.observations + 2.0)


def tally(events: Iterable[EventKind]) -> Record:
    """Count a sequence of event kinds into a record."""
    counts = {"agreed": 0, "disagreed": 0, "timed_out": 0}
    for kind in events:
        counts[kind] += 1
    return Record(**counts)
