"""A fleet of simulated nodes run through the live trust policy, job after job. Pure
except `plot`.

The simulator owns only the world: which answer each node gives (its fault mode), what
a node can know, time, load, liveness and the bookkeeping of what was delivered. Every
decision is the core's (cortensor.protocol):

- placement: leaders and replicas are drawn by `placement.Sampler` / `Ranking` (the
  vectorized `choose`) with the weights of `placement.merit` and the router's newcomer
  rule (`planning.newcomers_allowed`: no newcomer leads, `newcomer_room` for the rest);
- replication: how many replicas a job gets (`planning.checked_replicas`, the router's
  call of `replicas`), which are due when (`planning.replicas_due`, the router's hidden
  checks), how far a split vote escalates (`escalate`), how many unchecked results are
  re-validated;
- consensus and events: `judge_job` (below), the guard's rule: `decide` by strict
  majority, token equality as the comparator, and `adjudication.events_of` (agreed /
  disagreed for a checked job's replicas, none for a result accepted alone,
  `accepted_alone`) after a timed_out event for every missed deadline; the nodes it
  catches (`adjudication.caught`) have their unchecked results re-validated;
- reputation: `record` folds every event into the node's standing, which moves it
  between probation, active and quarantined (and bars a repeat offender);
- probing: `ProbeSchedule` under a `ProbePolicy` says when each node is probed, and
  `probing.draw`, the live ProbePool's choice, which probe (a verified job's input the
  node never held; prepared probes, each once per node, only before there is traffic).

Hidden checks, as the live router plans them: a job's leader answers before any
checker is sent (`replicas_due` sends nothing more until an answer is in), so it never
sees a peer's result; checkers, escalation replicas and re-validation runs come after
an answer exists. A job led by a node that runs it alone
is accepted unchecked and earns no event; when a node fails a check on a real job or a
probe, its latest unchecked results are re-run on two other nodes each and decided with
its own answer, and a verdict that changes is corrected.

What a node can know (the fault modes that adapt use exactly this):
- whether a peer's result exists (a checker's leader has answered; a leader has none);
- its own trust state: a node on probation or in quarantine gets nothing but probes, so
  every job it gets then is a probe;
- the inputs it (or, for a Sybil, any identity of its operator) held before: a probe
  drawn from traffic is one of those only if the pool rule were broken, and prepared
  probes are public;
- the code's thresholds (replication.MIN_STREAK).

Timing: job i happens at i * job_interval_s seconds. All nodes join at t = 0 on
probation and are probed back to back until admitted or quarantined; after that the
probe schedule runs.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from cortensor.errors import BadInput
from cortensor.protocol import replication
from cortensor.protocol.adjudication import Event, accepted_alone, caught, events_of
from cortensor.protocol.comparators import Comparator
from cortensor.protocol.consensus import Decision, Replica, decide
from cortensor.protocol.placement import (
    SPARE_FLOOR,
    NodeView,
    Ranking,
    Sampler,
    is_established,
    merit,
)
from cortensor.protocol.planning import checked_replicas, newcomers_allowed, replicas_due
from cortensor.protocol.probing import ProbePolicy, ProbeSchedule, draw
from cortensor.protocol.reputation import EventKind, Standing, record

Mode = Literal[
    "honest",
    "random",
    "lazy",
    "noisy",
    "colluding",
    "intermittent",
    "slow",
    "crash",
    "probe-aware",
    "adaptive",
    "sybil",
]
FAULT_MODES: tuple[Mode, ...] = get_args(Mode)[1:]
"""Every mode but honest, in the order of `Mode`."""
MODES: tuple[Mode, ...] = ("honest", *FAULT_MODES)
ALWAYS_DISHONEST: frozenset[Mode] = frozenset(
    {"random", "lazy", "noisy", "colluding", "slow", "probe-aware", "sybil"}
)
"""Modes that never deliver a right answer in time on a job they take for real: the
10-job quarantine target (per identity, for the Sybil group)."""
DEFAULT_MIX: Mapping[Mode, float] = {
    "sybil": 10,
    "random": 1,
    "lazy": 1,
    "noisy": 1,
    "colluding": 1,
    "intermittent": 2,
    "slow": 1,
    "crash": 1,
    "probe-aware": 1,
    "adaptive": 1,
}
"""Relative shares of the faulty nodes (percent of the fleet at --dishonest 0.2)."""

MODEL = "m"
HW_CLASS = "sim"
PREPARED_PROBES = 20
"""Prepared probes of the model: public, used only before there is verified traffic."""
PROBE_SOURCES = 5000
"""Latest verified jobs kept as probe sources (the live pool reads recent traffic)."""
MAX_ASSIGNMENTS = 2 * replication.MAX_REPLICAS
"""Assignments a job may make, re-routes included, before the missing replicas stay
missing (the live router would give up at the job's deadline)."""
DEFINITIONS = {
    "replicas_per_job": "assignments a real job made: leader, checkers, re-routes after a "
    "missed deadline and escalations; not probes, not re-validation runs (each reported "
    "per job on its own)",
    "warmup": "the first `warmup` share of the jobs (default 10%), left out of the "
    "after-warm-up figures",
    "jobs_until_quarantined": "real-job assignments (re-validation runs included) plus "
    "probes of one identity, up to and including the one that first quarantined it",
    "wrong_delivered": "results given to a client that differ from the truth, counting a "
    "verdict a re-validation later corrected; wrong_standing_after_corrections are those "
    "still wrong at the end",
    "honest_wrongly_quarantined": "honest nodes ever quarantined, for any reason",
}

Token = object
Answer = Token | None
"""A node's output; None when it missed the deadline."""


def same(a: Any, _pa: str, b: Any, _pb: str) -> bool:
    """The comparator: tokens agree when they are equal."""
    return bool(a == b)


@dataclass(frozen=True, slots=True)
class Judged:
    """What the simulation decides for a job from its replicas: as the guard decides."""

    status: Literal["verified", "inconclusive", "failed"]
    """failed: no replica answered."""
    decision: Decision
    events: tuple[Event, ...]
    """(node id, assignment id, kind) of every event, the missed deadlines first."""


def judge_job(
    replicas: Sequence[Replica],
    redundancy: int,
    *,
    auto: bool,
    timed_out: Sequence[tuple[str, str]] = (),
    compare: Comparator = same,
) -> Judged:
    """The decision on a job's replicas (in order of arrival) at this redundancy, and
    the events it earns: timed_out for each (assignment id, node id) in `timed_out`, then
    the guard's `events_of` the decision, none for a result an `auto` job accepted alone.

    Every job and re-validation of the simulation is decided here, and the replay test
    (tests/e2e/test_replay.py) feeds it a real fleet's jobs from the ledger.
    """
    decision = decide(replicas, redundancy, compare)
    assignment_of = {r.node_id: r.assignment_id for r in replicas}
    checked = not accepted_alone(redundancy, auto=auto)
    late: list[Event] = [(node, assignment, "timed_out") for assignment, node in timed_out]
    events = (*late, *events_of(decision, assignment_of, checked=checked))
    return Judged(decision.status if replicas else "failed", decision, events)


def standing_after(standing: Standing, kind: EventKind, at_s: float, *, probe: bool) -> Standing:
    """A node's standing after one more event at `at_s` seconds, as the simulation keeps
    it: reputation.record, the fold the ledger's trigger applies in SQL (the replay test
    folds a real fleet's events through it)."""
    return record(standing, kind, at_s, probe=probe)


# -- configuration --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation: the fleet, the workload and the seed."""

    nodes: int = 1000
    jobs: int = 100_000
    dishonest: float = 0.2
    mix: Mapping[Mode, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    """Relative shares of the fault modes among the `dishonest` share of the fleet."""
    intermittent_p: float = 0.1
    seed: int = 1
    probation: bool = True
    """False: every node starts active, so detection rests on real jobs alone."""
    timeout_rate: float = 0.02
    """Share of deadlines an honest node misses at any time."""
    overload_every_s: float = 300.0
    """Mean time between two overloaded periods of one honest node (inf: none)."""
    overload_s: float = 30.0
    """Length of an overloaded period."""
    overload_miss: float = 1.0
    """Share of deadlines missed while overloaded (its queue is backed up)."""
    probes: ProbePolicy = field(default_factory=ProbePolicy)
    job_interval_s: float = 0.01
    node_ttl_s: float = 5.0
    """A crashed node drops out of routing after this long without a heartbeat, or at its
    first missed deadline."""
    temperature: float = 1.0
    warmup: float = 0.1
    """Share of the first jobs left out of the after-warm-up figures."""
    samples: int = 200
    """Points of the score-over-time series."""


def parse_mix(text: str) -> dict[Mode, float]:
    """A mix like "random=4,lazy=2,colluding=4": relative shares of fault modes."""
    mix: dict[Mode, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        mode = name.strip()
        if mode not in FAULT_MODES:
            raise BadInput(f"unknown fault mode {mode!r}; use {', '.join(FAULT_MODES)}")
        try:
            share = float(value)
        except ValueError:
            raise BadInput(f"{item!r}: write MODE=SHARE, e.g. random=4") from None
        if not (math.isfinite(share) and share >= 0):
            raise BadInput(f"{item!r}: a share is a number >= 0")
        mix[mode] = share
    if not mix or sum(mix.values()) <= 0:
        raise BadInput("the mix needs at least one fault mode with a share above 0")
    return mix


def fleet_modes(nodes: int, dishonest: float, mix: Mapping[Mode, float]) -> dict[Mode, int]:
    """How many nodes of each mode: the faulty share split by largest remainder, with an
    even count of colluding nodes (they come in pairs; an odd one out stays honest)."""
    if not 0.0 <= dishonest <= 1.0:
        raise BadInput(f"dishonest is a share of the fleet, between 0 and 1 (got {dishonest})")
    faulty = round(nodes * dishonest)
    total = sum(mix.values())
    exact = {m: faulty * mix.get(m, 0.0) / total if total else 0.0 for m in FAULT_MODES}
    counts = {m: math.floor(v) for m, v in exact.items()}
    by_remainder = sorted(FAULT_MODES, key=lambda m: (counts[m] - exact[m], FAULT_MODES.index(m)))
    for m in by_remainder[: faulty - sum(counts.values())]:
        counts[m] += 1
    counts["colluding"] -= counts["colluding"] % 2
    return {"honest": nodes - sum(counts.values()), **counts}


# -- the simulation -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What happened to one real job (passed to `on_job`, for tests and traces)."""

    job: int
    truth: Token
    replicas: tuple[Replica, ...]
    redundancy: int
    decision: Decision
    delivered: Answer


@dataclass(slots=True)
class _Check:
    """A comparison under way: the replicas gathered and the assignments spent."""

    replicas: list[Replica]
    redundancy: int
    assignments: int = 0
    newcomers: int = 0
    late: list[tuple[str, str]] = field(default_factory=list)
    """(assignment id, node id) of the replicas that missed their deadline."""


@dataclass(frozen=True, slots=True)
class _Unchecked:
    """A result delivered unreplicated: nothing has compared it yet."""

    job: int
    delivered: Token


@dataclass(slots=True)
class _Source:
    """A verified job that probes may be drawn from."""

    job: int
    reference: Token
    holders: set[str]


@dataclass(frozen=True, slots=True)
class _Identity:
    """One identity a node slot had, as the report counts it."""

    mode: Mode
    jobs: int
    caught_at: int | None


class Simulation:
    """One run: call `run()` once, then read the report and the series."""

    def __init__(self, config: SimConfig, on_job: Callable[[JobRecord], None] | None = None):
        self.config = config
        self.on_job = on_job
        self.rng = random.Random(config.seed)
        counts = fleet_modes(config.nodes, config.dishonest, config.mix)
        modes: list[Mode] = [m for m in MODES for _ in range(counts[m])]
        self.rng.shuffle(modes)
        self.modes = modes
        self.by_mode = {
            m: np.array([i for i, mm in enumerate(modes) if mm == m]) for m in MODES if m in modes
        }
        self.ids = [f"n{i:05d}" for i in range(len(modes))]
        self.index = {node_id: i for i, node_id in enumerate(self.ids)}
        colluders = [i for i, m in enumerate(modes) if m == "colluding"]
        self.pair = {n: k // 2 for k, n in enumerate(colluders)}
        self.crash_at = {
            i: self.rng.randrange(1, max(config.jobs, 2))
            for i, m in enumerate(modes)
            if m == "crash"
        }
        start = Standing() if config.probation else Standing(trust="active")
        self.standing = [start] * len(modes)
        self.scores = np.array([s.score for s in self.standing])
        self.newcomers = np.array([not is_established(s.streak) for s in self.standing])
        self.spare = np.full(len(modes), 1.0 + SPARE_FLOOR)
        self.alive = [True] * len(modes)
        self.sampler = Sampler(np.zeros(len(modes)), np.random.default_rng(config.seed))
        self.schedule = ProbeSchedule(config.probes, random.Random(config.seed + 1))
        self.probe_heap: list[tuple[float, int, str]] = []
        self.now = 0
        self._serial = 0
        self._registrations = 0
        self.held: list[set[int]] = [set() for _ in modes]
        self.operator_seen: set[int] = set()
        """Inputs any Sybil identity held in a finished job: its operator pools them."""
        self._operator_pending: list[int] = []
        self.honest_answers = [0] * len(modes)
        """An adaptive node's own count of its right answers while active."""
        self.sources: deque[_Source] = deque(maxlen=PROBE_SOURCES)
        self.prepared = [_Source(-1 - k, -1 - k, set()) for k in range(PREPARED_PROBES)]
        self.unchecked: list[list[_Unchecked]] = [[] for _ in modes]
        self.assigned = [0] * len(modes)
        self.probed = [0] * len(modes)
        self.first_quarantine: dict[int, int] = {}
        self.retired: list[_Identity] = []
        self.quarantines = [0] * len(modes)
        self.drop_due: dict[int, list[int]] = {}
        self.overload_due: dict[int, list[tuple[int, bool]]] = {}
        self.replicas_per_job = np.zeros(config.jobs, dtype=np.int16)
        self.probes_per_job = np.zeros(config.jobs, dtype=np.int16)
        self.revalidation_per_job = np.zeros(config.jobs, dtype=np.int16)
        self.score_series: list[tuple[int, dict[Mode, float]]] = []
        self.wrong_by_mode: dict[Mode, int] = dict.fromkeys(MODES, 0)
        self.stats = {
            "wrong_delivered": 0,
            "wrong_unreplicated": 0,
            "wrong_majorities": 0,
            "wrong_standing": 0,
            "corrections": 0,
            "inconclusive": 0,
            "failed": 0,
            "probes": 0,
            "probes_admission": 0,
            "probes_recognised": 0,
            "probes_poisoned": 0,
            "revalidated": 0,
            "revalidation_assignments": 0,
            "revalidation_inconclusive": 0,
            "crashed_dropped": 0,
            "timeouts_honest": 0,
        }
        self.wall_s = 0.0
        self._plan_overloads()
        for node in range(len(modes)):
            self._reweight(node)

    # -- the world --------------------------------------------------------------------

    def _plan_overloads(self) -> None:
        """Overloaded periods of the honest nodes: exponential gaps, fixed length. While
        overloaded a node misses deadlines and the router sees it busy (its assignments
        stay outstanding), so its spare capacity is the floor."""
        c = self.config
        if not math.isfinite(c.overload_every_s) or c.overload_s <= 0:
            return
        span = c.jobs * c.job_interval_s
        length = max(1, round(c.overload_s / c.job_interval_s))
        for node in self.by_mode.get("honest", np.array([], dtype=int)):
            at = self.rng.expovariate(1.0 / c.overload_every_s)
            while at < span:
                begin = round(at / c.job_interval_s)
                self.overload_due.setdefault(begin, []).append((int(node), True))
                self.overload_due.setdefault(begin + length, []).append((int(node), False))
                at += c.overload_s + self.rng.expovariate(1.0 / c.overload_every_s)

    def _misses(self, node: int) -> bool:
        """Whether an honest node misses this deadline (background rate or overload)."""
        overloaded = self.spare[node] == SPARE_FLOOR
        rate = self.config.overload_miss if overloaded else self.config.timeout_rate
        return rate > 0 and self.rng.random() < rate

    def _knows_probe(self, node: int, key: int) -> bool:
        """Whether the node can tell that input `key` is a probe: it gets nothing else
        while not active; prepared probes are public; an input it (or its operator)
        held before is recognised."""
        if self.standing[node].trust != "active" or key < 0:
            return True
        if self.modes[node] == "sybil":
            return key in self.operator_seen
        return key in self.held[node]

    def answer(
        self, node: int, key: int, truth: Token, *, peer: bool = False, probe: bool = False
    ) -> Answer:
        """What `node` returns for input `key` whose right answer is `truth`; `peer`:
        a peer's result for it exists (the node is a checker). `probe` is the world's
        knowledge, used only through what the node can tell (`_knows_probe`)."""
        mode = self.modes[node]
        if mode == "sybil":
            # Known to the operator once this job is over (a sibling identity checking
            # the same job at the same time does not take it for a probe).
            self._operator_pending.append(key)
        if mode == "honest":
            if self._misses(node):
                self.stats["timeouts_honest"] += 1
                return None
            return truth
        if mode == "slow" or (mode == "crash" and self.now >= self.crash_at[node]):
            return None
        if mode in ("crash", "intermittent"):
            if mode == "crash" or self.rng.random() >= self.config.intermittent_p:
                return truth
            return self._wrong()
        if mode in ("probe-aware", "sybil", "adaptive"):
            return self._adapted(node, key, truth, peer=peer)
        return self._fixed_wrong(node, key)

    def _adapted(self, node: int, key: int, truth: Token, *, peer: bool) -> Answer:
        """The answer of a mode that cheats only when it believes it is not watched."""
        mode = self.modes[node]
        if mode == "probe-aware":
            return truth if self._knows_probe(node, key) else ("aware", node, key)
        if mode == "sybil":
            return truth if self._knows_probe(node, key) else ("sybil", key)
        if self.standing[node].trust != "active":
            return truth
        if not peer and self.honest_answers[node] >= replication.MIN_STREAK:
            return ("adaptive", node, key)
        self.honest_answers[node] += 1
        return truth

    def _fixed_wrong(self, node: int, key: int) -> Answer:
        """The wrong answer of a mode that is always wrong."""
        mode = self.modes[node]
        if mode == "lazy":
            return ("lazy",)
        if mode == "noisy":
            return ("noisy", node, key)
        if mode == "colluding":
            return ("pair", self.pair[node], key)
        return self._wrong()

    def _wrong(self) -> Token:
        self._serial += 1
        return ("wrong", self._serial)

    # -- reputation -------------------------------------------------------------------

    def _reweight(self, node: int) -> None:
        usable = self.alive[node] and self.standing[node].trust == "active"
        w = merit(
            float(self.scores[node]),
            float(self.spare[node]),
            self.config.temperature,
            newcomer=bool(self.newcomers[node]),
        )
        self.sampler.update(node, w if usable else 0.0)

    def _event(self, node: int, kind: EventKind, *, probe: bool = False) -> None:
        before = self.standing[node]
        after = standing_after(before, kind, self.now * self.config.job_interval_s, probe=probe)
        self.standing[node] = after
        self.scores[node] = after.score
        self.newcomers[node] = not is_established(after.streak)
        self._reweight(node)
        if after.trust == before.trust:
            return
        if after.trust == "quarantined":
            self.quarantines[node] += 1
            self.first_quarantine.setdefault(node, self._jobs_done(node))
            if self.modes[node] == "sybil":
                self._reregister(node)
                return
        if after.trust == "active" and before.trust == "quarantined":
            self.honest_answers[node] = 0
        self._plan_probe(node)

    def _reregister(self, node: int) -> None:
        """A quarantined Sybil identity is dropped and the node comes back under a fresh
        one: new id, no record, on probation."""
        self.retired.append(
            _Identity("sybil", self._jobs_done(node), self.first_quarantine.pop(node, None))
        )
        self.schedule.forget(self.ids[node])
        self._registrations += 1
        self.ids[node] = f"s{self._registrations:05d}"
        self.index[self.ids[node]] = node
        self.standing[node] = Standing()
        self.scores[node] = Standing().score
        self.newcomers[node] = True
        self.held[node] = set()
        self.unchecked[node] = []
        self.assigned[node] = self.probed[node] = 0
        self._reweight(node)
        self._plan_probe(node)

    # -- probes -----------------------------------------------------------------------

    def _view(self, node: int) -> NodeView:
        seen = self.now * self.config.job_interval_s if self.alive[node] else -math.inf
        return NodeView(
            self.ids[node], HW_CLASS, frozenset({MODEL}), seen, trust=self.standing[node].trust
        )

    def _plan_probe(self, node: int) -> None:
        """Tell the schedule the node's state now; queue its next probe."""
        if not self.alive[node] or self.standing[node].barred:
            return
        node_id = self.ids[node]
        self.schedule.due(self._view(node), self.now * self.config.job_interval_s)
        at = self.schedule.next_at(node_id)
        if at is not None and math.isfinite(at):
            heapq.heappush(self.probe_heap, (at, node, node_id))

    def _probes_due(self) -> None:
        now_s = self.now * self.config.job_interval_s
        while self.probe_heap and self.probe_heap[0][0] <= now_s:
            at, node, node_id = heapq.heappop(self.probe_heap)
            if node_id != self.ids[node] or self.schedule.next_at(node_id) != at:
                continue  # a stale entry: the node's state changed, or it re-registered
            if not self.alive[node] or self.standing[node].barred:
                continue
            if self.schedule.due(self._view(node), now_s):
                drawn = self._probe_source(node)
                if drawn is None:
                    continue  # it has seen every probe: it waits for new traffic
                self.schedule.sent(node_id, now_s)
                passed = self._probe(node, drawn)
                if self.ids[node] == node_id:
                    self.schedule.outcome(node_id, passed)
            self._plan_probe(node)

    def _probe_source(self, node: int) -> tuple[int, Token] | None:
        """A probe's input and reference, as the live ProbePool picks it (`draw`): a
        recent verified job the node never held; a prepared probe it never got only
        while there is no traffic. None when there is none for it."""
        node_id = self.ids[node]
        pool: Sequence[_Source] = self.sources if self.sources else self.prepared
        index = draw(len(pool), lambda i: node_id not in pool[i].holders, self.rng)
        if index is None:
            return None
        source = pool[index]
        source.holders.add(node_id)
        return source.job, source.reference

    def _probe(self, node: int, drawn: tuple[int, Token]) -> bool:
        """Send the node the probe drawn for it; whether it passed."""
        key, reference = drawn
        self.probed[node] += 1
        self.stats["probes"] += 1
        if self.now < self.config.jobs:
            self.probes_per_job[self.now] += 1
        self.stats["probes_recognised"] += self.modes[node] != "honest" and self._knows_probe(
            node, key
        )
        got = self.answer(node, key, key, probe=True)
        self.held[node].add(key)
        self._remember()
        if got is None:
            self._missed(node)
        passed = got == reference
        self.stats["probes_poisoned"] += got == key and not passed
        kind: EventKind = "agreed" if passed else "timed_out" if got is None else "disagreed"
        self._event(node, kind, probe=True)
        if kind == "disagreed" and self.unchecked[node]:
            # A failed probe reopens the node's unchecked results, as a failed check does.
            self._revalidate_all([node])
        return passed

    def _remember(self) -> None:
        self.operator_seen.update(self._operator_pending)
        self._operator_pending.clear()

    def _missed(self, node: int) -> None:
        """A node missed a deadline: a crashed one is now known to be gone."""
        if self.modes[node] == "crash" and self.alive[node] and self.now >= self.crash_at[node]:
            self._drop(node)

    def _drop(self, node: int) -> None:
        if self.alive[node]:
            self.alive[node] = False
            self.stats["crashed_dropped"] += 1
            self._reweight(node)

    # -- jobs -------------------------------------------------------------------------

    def _send(self, check: _Check, node: int, job: int) -> bool:
        """Run one replica on `node`; False when it missed its deadline (charged when
        the job is decided, as the guard charges it)."""
        check.assignments += 1
        check.newcomers += bool(self.newcomers[node])
        self.assigned[node] += 1
        got = self.answer(node, job, job, peer=bool(check.replicas))
        self.held[node].add(job)
        assignment = f"{job}/{check.assignments}"
        if got is None:
            self._missed(node)
            check.late.append((assignment, self.ids[node]))
            return False
        check.replicas.append(Replica(self.ids[node], str(job), "token", got, None, assignment))
        return True

    def _fill(self, check: _Check, ranking: Ranking, job: int) -> None:
        """Send the replicas the router finds due (`replicas_due`: an `auto` job's checks
        only once an answer is in), one at a time as answers come; a late one is replaced
        by the next node of the ranking, as the live router re-routes it."""
        while check.assignments < MAX_ASSIGNMENTS:
            answered = len(check.replicas)
            if not replicas_due(check.redundancy, auto=True, live=answered, answered=answered):
                return
            room = newcomers_allowed(check.redundancy, check.newcomers, leading=False)
            nxt = ranking.take(1, newcomers=self.newcomers, room=room)
            if not nxt:
                return
            self._send(check, nxt[0], job)

    def _settle(self, check: _Check, ranking: Ranking, job: int) -> Judged:
        """Decide by strict majority, escalating while there is none, up to the cap."""
        while True:
            judged = judge_job(check.replicas, check.redundancy, auto=True, timed_out=check.late)
            if judged.status == "verified":
                return judged
            more = replication.escalate(check.redundancy)
            if more is None or check.assignments >= MAX_ASSIGNMENTS:
                return judged
            check.redundancy = more
            before = check.assignments
            self._fill(check, ranking, job)
            if check.assignments == before:
                return judged

    def _apply(self, judged: Judged, *, spare: int | None = None) -> list[int]:
        """Record a decision's events; the nodes it caught (but `spare`) are returned for
        re-validation of their unchecked results."""
        for node_id, _, kind in judged.events:
            self._event(self.index[node_id], kind)  # type: ignore[arg-type]
        return [n for n in (self.index[node_id] for node_id in caught(judged.events)) if n != spare]

    def _job(self, job: int) -> None:
        ranking = self.sampler.ranking()
        room = newcomers_allowed(1, 0, leading=True)
        leader = ranking.take(1, newcomers=self.newcomers, room=room)
        if not leader:
            self.stats["failed"] += 1
            return
        lead = self.standing[leader[0]]
        check = _Check([], checked_replicas(lead.streak, lead.offences, self.rng))
        self._send(check, leader[0], job)
        self._fill(check, ranking, job)
        judged = self._settle(check, ranking, job)
        decision = judged.decision
        self._remember()
        self.replicas_per_job[job] = check.assignments
        canonical = decision.canonical if decision.status == "verified" else None
        delivered = canonical.output if canonical is not None else None
        if canonical is None:
            self.stats["inconclusive"] += 1
        elif check.redundancy == 1:
            # Accepted unchecked: no event now, re-validated if its node fails a check.
            node = self.index[canonical.node_id]
            self.unchecked[node].append(_Unchecked(job, delivered))
            self.stats["wrong_unreplicated"] += delivered != job
        else:
            self.stats["wrong_majorities"] += delivered != job
            holders = {r.node_id for r in check.replicas}
            self.sources.append(_Source(job, delivered, holders))
        if canonical is not None and delivered != job:
            self.stats["wrong_delivered"] += 1
            self.stats["wrong_standing"] += 1
            self.wrong_by_mode[self.modes[self.index[canonical.node_id]]] += 1
        if self.on_job is not None:
            record_ = JobRecord(
                job, job, tuple(check.replicas), check.redundancy, decision, delivered
            )
            self.on_job(record_)
        self._revalidate_all(self._apply(judged))

    def _revalidate_all(self, nodes: list[int]) -> None:
        pending = list(nodes)
        while pending:
            pending.extend(self._revalidate(pending.pop(0)))

    def _revalidate(self, node: int) -> list[int]:
        """Re-run a node's latest unchecked results on two other nodes each, most recent
        first; correct the verdicts that change. Returns the checkers that disagreed."""
        batch = self.unchecked[node][-replication.REVALIDATE_LIMIT :]
        del self.unchecked[node][-replication.REVALIDATE_LIMIT :]
        failed: list[int] = []
        for item in reversed(batch):
            ranking = self.sampler.ranking(exclude=node)
            original = Replica(self.ids[node], str(item.job), "token", item.delivered)
            check = _Check([original], replication.REPLICAS, newcomers=int(self.newcomers[node]))
            self._fill(check, ranking, item.job)
            judged = self._settle(check, ranking, item.job)
            decision = judged.decision
            self._remember()
            self.stats["revalidated"] += 1
            self.stats["revalidation_assignments"] += check.assignments
            if self.now < self.config.jobs:
                self.revalidation_per_job[self.now] += check.assignments
            if decision.status != "verified" or decision.canonical is None:
                # The first verdict stands, still unchecked; the checkers' timeouts count.
                self._apply(judged)
                self.stats["revalidation_inconclusive"] += 1
                continue
            failed += self._apply(judged, spare=node)
            verdict = decision.canonical.output
            if verdict != item.delivered:
                self.stats["corrections"] += 1
                was_wrong, wrong = item.delivered != item.job, verdict != item.job
                # A revision that makes a right verdict wrong delivers a wrong result.
                self.stats["wrong_delivered"] += wrong and not was_wrong
                self.stats["wrong_standing"] += int(wrong) - int(was_wrong)
        return failed

    # -- the run ----------------------------------------------------------------------

    def _admit(self) -> None:
        """Genesis: every node on probation is probed until admitted or quarantined."""
        while True:
            waiting = [n for n, s in enumerate(self.standing) if s.trust == "probation"]
            sent = 0
            for node in waiting:
                drawn = self._probe_source(node)
                if drawn is not None:
                    self._probe(node, drawn)
                    sent += 1
            if not sent:
                return  # every node admitted, quarantined, or out of prepared probes
            self.stats["probes_admission"] += sent

    def _tick(self, job: int) -> None:
        self.now = job
        for node in self.drop_due.pop(job, ()):
            self._drop(node)
        for node, overloaded in self.overload_due.pop(job, ()):
            self.spare[node] = SPARE_FLOOR if overloaded else 1.0 + SPARE_FLOOR
            self._reweight(node)
        self._probes_due()

    def run(self) -> dict[str, Any]:
        """Run every job and return the report (JSON-ready)."""
        started = time.perf_counter()
        ttl_jobs = max(1, round(self.config.node_ttl_s / self.config.job_interval_s))
        for node, at in self.crash_at.items():
            self.drop_due.setdefault(at + ttl_jobs, []).append(node)
        self._admit()
        for node in range(len(self.modes)):
            self._plan_probe(node)
        every = max(1, self.config.jobs // max(self.config.samples, 1))
        for job in range(self.config.jobs):
            self._tick(job)
            self._job(job)
            if job % every == 0 or job == self.config.jobs - 1:
                self._sample(job)
        self.wall_s = time.perf_counter() - started
        return self.report()

    def _sample(self, job: int) -> None:
        means = {m: float(self.scores[nodes].mean()) for m, nodes in self.by_mode.items()}
        self.score_series.append((job, means))

    # -- the report -------------------------------------------------------------------

    def _jobs_done(self, node: int) -> int:
        return self.assigned[node] + self.probed[node]

    def identities(self, mode: Mode) -> list[_Identity]:
        """Every identity nodes of this mode had: retired ones and the current ones."""
        current = [
            _Identity(mode, self._jobs_done(n), self.first_quarantine.get(n))
            for n, m in enumerate(self.modes)
            if m == mode
        ]
        return [i for i in self.retired if i.mode == mode] + current

    def _mode_report(self, mode: Mode) -> dict[str, Any]:
        nodes = [i for i, m in enumerate(self.modes) if m == mode]
        identities = self.identities(mode)
        caught = [i.caught_at for i in identities if i.caught_at is not None]
        free = [i.jobs for i in identities if i.caught_at is None]
        return {
            "nodes": len(nodes),
            "identities": len(identities),
            "ever_quarantined": len(caught),
            "quarantined_at_end": sum(self.standing[n].trust == "quarantined" for n in nodes),
            "barred_at_end": sum(self.standing[n].barred for n in nodes),
            "quarantine_episodes": sum(self.quarantines[n] for n in nodes),
            "jobs_until_quarantined": {
                "max": max(caught, default=None),
                "median": statistics.median(caught) if caught else None,
            },
            "never_quarantined": {"count": len(free), "most_jobs": max(free, default=None)},
            "dropped_as_dead": sum(not self.alive[n] for n in nodes),
            "wrong_delivered": self.wrong_by_mode[mode],
            "mean_score_at_end": round(float(np.mean(self.scores[nodes])), 4) if nodes else None,
        }

    def report(self) -> dict[str, Any]:
        """The run's figures: see the module docstring of cortensor.tools.simulate."""
        c, s = self.config, self.stats
        jobs = max(c.jobs, 1)
        warm = round(c.jobs * c.warmup)

        def after_warmup(values: npt.NDArray[np.int16]) -> float:
            return round(float(values[warm:].mean()) if c.jobs > warm else 0.0, 4)

        rpj = self.replicas_per_job
        honest = [i for i in self.identities("honest") if i.caught_at is not None]
        honest_ids = sorted(self.ids[n] for n in self.first_quarantine if self.modes[n] == "honest")
        modes = {m: self._mode_report(m) for m in FAULT_MODES}
        report: dict[str, Any] = {
            "nodes": c.nodes,
            "jobs": c.jobs,
            "seed": c.seed,
            "dishonest": c.dishonest,
            "intermittent_p": c.intermittent_p,
            "probation": c.probation,
            "timeout_rate": c.timeout_rate,
            "overload": {"every_s": c.overload_every_s, "s": c.overload_s, "miss": c.overload_miss},
            "mix": fleet_modes(c.nodes, c.dishonest, c.mix),
            "mix_shares": dict(c.mix),
            "wrong_delivered": {"count": s["wrong_delivered"], "rate": s["wrong_delivered"] / jobs},
            "wrong_delivered_unreplicated": s["wrong_unreplicated"],
            "wrong_majorities": s["wrong_majorities"],
            "wrong_standing_after_corrections": s["wrong_standing"],
            "corrections": s["corrections"],
            "revalidated": s["revalidated"],
            "revalidation_inconclusive": s["revalidation_inconclusive"],
            "mean_replicas_per_job": round(float(rpj.mean()) if c.jobs else 0.0, 4),
            "mean_replicas_after_warmup": after_warmup(rpj),
            "warmup_jobs": warm,
            "probes_per_job_after_warmup": after_warmup(self.probes_per_job),
            "revalidation_runs_per_job_after_warmup": after_warmup(self.revalidation_per_job),
            "mean_replicas_with_revalidation": round(
                (float(rpj.sum()) + s["revalidation_assignments"]) / jobs, 4
            ),
            "inconclusive_jobs": s["inconclusive"],
            "failed_jobs": s["failed"],
            "probes": {
                "total": s["probes"],
                "admission": s["probes_admission"],
                "recognised_by_cheaters": s["probes_recognised"],
                "poisoned": s["probes_poisoned"],
            },
            "sybil_registrations": self._registrations,
            "honest_timeouts": s["timeouts_honest"],
            "modes": modes,
            "honest_wrongly_quarantined": {"count": len(honest), "ids": honest_ids},
            "definitions": DEFINITIONS,
            "wall_s": round(self.wall_s, 2),
        }
        report["targets"] = targets(report)
        return report


ALWAYS_DISHONEST_LIMIT = 10
"""Jobs (real and probes) within which an always-dishonest identity must be quarantined."""
INTERMITTENT_LIMIT = 100
"""Jobs within which a node wrong on 10% of its jobs must be quarantined."""


def targets(report: Mapping[str, Any]) -> dict[str, bool]:
    """The policy's targets, checked against a report."""
    modes = report["modes"]

    def within(mode: str, limit: int) -> bool:
        m = modes[mode]
        caught_in_time = (m["jobs_until_quarantined"]["max"] or 0) <= limit
        # A node not yet quarantined is within the target while it has done fewer jobs.
        free = m["never_quarantined"]
        return caught_in_time and (free["count"] == 0 or free["most_jobs"] < limit)

    return {
        "wrong_delivered_at_most_0.1%": report["wrong_delivered"]["rate"] <= 0.001,
        "mean_replicas_after_warmup_at_most_1.3": report["mean_replicas_after_warmup"] <= 1.3,
        "always_dishonest_quarantined_within_10_jobs": all(
            within(m, ALWAYS_DISHONEST_LIMIT) for m in sorted(ALWAYS_DISHONEST) if modes[m]["nodes"]
        ),
        "intermittent_quarantined_within_100_jobs": within("intermittent", INTERMITTENT_LIMIT),
        "no_honest_node_quarantined": report["honest_wrongly_quarantined"]["count"] == 0,
        "wall_time_under_10_s": report["wall_s"] < 10,
    }


def simulate(
    config: SimConfig, on_job: Callable[[JobRecord], None] | None = None
) -> tuple[dict[str, Any], Simulation]:
    """Run one simulation; the report and the finished simulation (for its series)."""
    sim = Simulation(config, on_job)
    return sim.run(), sim


def _moving_average(values: npt.NDArray[np.int16], window: int) -> npt.NDArray[np.float64]:
    kernel = np.ones(window) / window
    return np.convolve(values.astype(np.float64), kernel, mode="valid")


def plot(sim: Simulation, path: Path) -> None:
    """Write a PNG: mean score per mode over time, and replicas per job (moving average)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 8))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    xs = [job for job, _ in sim.score_series]
    # The always-dishonest modes share one curve: line styles keep each one visible.
    styles = ["-", "--", ":", "-."]
    for i, mode in enumerate(m for m in MODES if m in sim.by_mode):
        ys = [means[mode] for _, means in sim.score_series]
        top.plot(xs, ys, styles[i % len(styles)], label=mode)
    top.set_ylabel("mean score")
    top.set_ylim(0, 1)
    top.legend(loc="lower left", ncol=4, fontsize="small")
    top.set_title(f"{sim.config.nodes} nodes, {sim.config.jobs} jobs, seed {sim.config.seed}")
    window = max(1, sim.config.jobs // 100)
    rpj = sim.replicas_per_job
    if len(rpj) >= window:
        bottom.plot(np.arange(window - 1, len(rpj)), _moving_average(rpj, window))
    bottom.set_ylabel(f"replicas per job ({window}-job mean)")
    bottom.set_xlabel("job")
    bottom.axhline(1.3, linestyle="--", color="grey", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


__all__ = [
    "ALWAYS_DISHONEST",
    "DEFAULT_MIX",
    "FAULT_MODES",
    "JobRecord",
    "Judged",
    "SimConfig",
    "Simulation",
    "fleet_modes",
    "judge_job",
    "parse_mix",
    "plot",
    "same",
    "simulate",
    "standing_after",
    "targets",
]
