"""A fleet of simulated nodes run through the live trust policy, job after job. Pure
except `plot`.

The simulator owns only the world: which answer each node gives (its fault mode), time,
liveness and the bookkeeping of what was delivered. Every decision is the live code's:
leaders and replicas are drawn with cortensor.protocol.placement's weight (score squared times
spare) by Efraimidis-Spirakis sampling, vectorized here (`Sampler`); cortensor.protocol.replication
decides how many replicas a job gets and how far it escalates; cortensor.protocol.consensus
decides each replicated job by strict majority, with token equality as the comparator;
cortensor.protocol.reputation folds every event into the node's standing, which moves it between
probation, active and quarantined.

A job led by a node that runs it alone is accepted unchecked and earns no event; when a
node fails a check on a real job (its answer disagreed with the majority), its latest
unchecked results (replication.REVALIDATE_LIMIT) are re-run on two other nodes each and
decided with its own answer, and a verdict that changes is corrected. A missed deadline
is a failure for reputation but does not trigger re-validation: it says nothing about the
results the node did deliver.

Timing: job i happens at i * job_interval_s. All nodes join at t = 0 in probation and
are probed back to back until admitted or quarantined; a quarantined node is probed
every QUARANTINE_PROBE_EVERY jobs, twice as rarely after each probe it fails (up to
PROBE_BACKOFF_CAP times rarer), and is readmitted by the reputation rules.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cortensor.errors import BadInput
from cortensor.protocol import replication
from cortensor.protocol.consensus import Decision, Replica, decide
from cortensor.protocol.placement import SPARE_FLOOR
from cortensor.protocol.reputation import EventKind, Standing, record

Mode = Literal["honest", "random", "lazy", "noisy", "colluding", "intermittent", "slow", "crash"]
FAULT_MODES: tuple[Mode, ...] = (
    "random",
    "lazy",
    "noisy",
    "colluding",
    "intermittent",
    "slow",
    "crash",
)
MODES: tuple[Mode, ...] = ("honest", *FAULT_MODES)
ALWAYS_DISHONEST: frozenset[Mode] = frozenset({"random", "lazy", "noisy", "colluding", "slow"})
"""Modes that never deliver a right answer in time: the 20-job quarantine target."""
DEFAULT_MIX: Mapping[Mode, float] = {
    "random": 4,
    "lazy": 2,
    "noisy": 3,
    "colluding": 4,
    "intermittent": 5,
    "slow": 1,
    "crash": 1,
}
"""Relative shares of the faulty nodes (percent of the fleet at --dishonest 0.2)."""

QUARANTINE_PROBE_EVERY = 100
"""Jobs between two probes of a quarantined node that passed its last probe."""
PROBE_BACKOFF_CAP = 64
"""A quarantined node that keeps failing is probed at most this many times more rarely."""
MAX_ASSIGNMENTS = 2 * replication.MAX_REPLICAS
"""Assignments a job may make, re-routes included, before the missing replicas stay
missing (the live router would give up at the job's deadline)."""
DEFINITIONS = {
    "replicas_per_job": "assignments a real job made: replicas, re-routes after a missed "
    "deadline and escalations; not probes, not re-validation runs (those are in "
    "mean_replicas_with_revalidation)",
    "warmup": "the first `warmup` share of the jobs (default 10%), left out of "
    "mean_replicas_after_warmup",
    "jobs_until_quarantined": "real-job assignments (re-validation runs included) plus "
    "probes, up to and including the one that first quarantined the node",
    "wrong_delivered": "results given to a client that differ from the truth, counting a "
    "verdict a re-validation later corrected; wrong_standing_after_corrections are those "
    "still wrong at the end",
}
SPARE = 1.0 + SPARE_FLOOR
"""routing.NodeView.spare of an idle node of capacity 1: jobs run one at a time here."""

Token = object
Answer = Token | None
"""A node's output; None when it missed the deadline."""


def same(a: Any, _pa: str, b: Any, _pb: str) -> bool:
    """The comparator: tokens agree when they are equal."""
    return bool(a == b)


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
    job_interval_s: float = 0.01
    node_ttl_s: float = 5.0
    """A crashed node drops out of routing after this long without a heartbeat, or at its
    first missed deadline."""
    temperature: float = 1.0
    warmup: float = 0.1
    """Share of the first jobs left out of mean_replicas_after_warmup."""
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


# -- routing --------------------------------------------------------------------------


def weights(scores: npt.NDArray[np.float64], temperature: float = 1.0) -> npt.NDArray[np.float64]:
    """routing.weight of idle nodes with these scores, for many nodes at once."""
    merit = np.maximum(scores, 1e-6) ** 2 * SPARE
    return merit ** (1.0 / temperature) if temperature > 0 else merit


class Sampler:
    """Weighted sampling without replacement over a fleet, as routing.choose does it.

    routing.choose keeps the k largest keys log(u) / w. With E = -log(u), an Exp(1)
    variate, that is the k smallest E / w: exponentials are drawn in blocks and the
    inverse weights kept in an array updated node by node, so a draw costs a few numpy
    calls over the fleet instead of a Python loop. A node of weight 0 never comes out.
    """

    BLOCK = 512

    def __init__(self, weights: npt.NDArray[np.float64], rng: np.random.Generator) -> None:
        self._inverse = np.full(len(weights), np.inf)
        for node, w in enumerate(weights):
            self.update(node, float(w))
        self._rng = rng
        self._block = np.empty((0, len(weights)))
        self._row = 0

    def update(self, node: int, weight: float) -> None:
        """Set one node's weight (0 takes it out of the draws)."""
        self._inverse[node] = 1.0 / weight if weight > 0 else np.inf

    def ranking(self, exclude: int | None = None) -> Ranking:
        """A fresh random order of the nodes, read lazily: a weighted sample of any size
        is its first entries."""
        if self._row == len(self._block):
            # +tiny: an exponential of exactly 0 times an infinite inverse would be NaN.
            self._block = self._rng.standard_exponential((self.BLOCK, len(self._inverse)))
            self._block += 1e-300
            self._row = 0
        keys = self._block[self._row] * self._inverse
        self._row += 1
        if exclude is not None:
            keys[exclude] = np.inf
        return Ranking(keys)


class Ranking:
    """Nodes in increasing order of their sampling keys, computed only as far as read."""

    def __init__(self, keys: npt.NDArray[np.float64]) -> None:
        self._keys = keys
        self._order: list[int] = []
        self._sorted = 0
        self._next = 0

    def take(self, n: int) -> list[int]:
        """The next n nodes of the sample (fewer when the fleet runs out)."""
        want = self._next + n
        if want > self._sorted:
            self._extend(want)
        taken = self._order[self._next : want]
        self._next += len(taken)
        return taken

    def _extend(self, want: int) -> None:
        keys = self._keys
        size = len(keys)
        # The leader alone is an argmin; more replicas sort a head of 16 (escalation and
        # re-routes rarely read further), and only past that the whole fleet.
        depth = 1 if want == 1 else min(max(want, 16), size)
        if depth == 1:
            top = [int(np.argmin(keys))]
        else:
            part = np.argpartition(keys, depth - 1)[:depth] if depth < size else np.arange(size)
            top = [int(i) for i in part[np.argsort(keys[part], kind="stable")]]
        self._order = [i for i in top if math.isfinite(keys[i])]
        exhausted = len(self._order) < len(top) or depth == size
        self._sorted = size if exhausted else depth


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


@dataclass(frozen=True, slots=True)
class _Unchecked:
    """A result delivered unreplicated: nothing has compared it yet."""

    job: int
    delivered: Token


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
        self.alive = [True] * len(modes)
        self.sampler = Sampler(np.zeros(len(modes)), np.random.default_rng(config.seed))
        self.now = 0
        self._serial = 0
        self._probe_keys = 0
        self.unchecked: list[list[_Unchecked]] = [[] for _ in modes]
        self.assigned = [0] * len(modes)
        self.probed = [0] * len(modes)
        self.first_quarantine: dict[int, int] = {}
        self.quarantines = [0] * len(modes)
        self.probe_interval = [QUARANTINE_PROBE_EVERY] * len(modes)
        self.probe_due: dict[int, list[int]] = {}
        self.drop_due: dict[int, list[int]] = {}
        self.replicas_per_job = np.zeros(config.jobs, dtype=np.int16)
        self.score_series: list[tuple[int, dict[Mode, float]]] = []
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
            "revalidated": 0,
            "revalidation_assignments": 0,
            "revalidation_inconclusive": 0,
            "crashed_dropped": 0,
        }
        self.wall_s = 0.0
        for node in range(len(modes)):
            self._reweight(node)

    # -- the world --------------------------------------------------------------------

    def answer(self, node: int, job: int) -> Answer:
        """What `node` returns for job (or probe) `job`, whose truth is the token `job`."""
        mode = self.modes[node]
        if mode == "honest":
            return job
        if mode == "slow" or (mode == "crash" and self.now >= self.crash_at[node]):
            return None
        if mode == "crash":
            return job
        if mode == "lazy":
            return ("lazy",)
        if mode == "noisy":
            return ("noisy", node, job)
        if mode == "colluding":
            return ("pair", self.pair[node], job)
        if mode == "intermittent" and self.rng.random() >= self.config.intermittent_p:
            return job
        self._serial += 1
        return ("wrong", self._serial)

    # -- reputation -------------------------------------------------------------------

    def _reweight(self, node: int) -> None:
        usable = self.alive[node] and self.standing[node].trust == "active"
        w = float(weights(self.scores[node : node + 1], self.config.temperature)[0])
        self.sampler.update(node, w if usable else 0.0)

    def _event(self, node: int, kind: EventKind, *, probe: bool = False) -> None:
        before = self.standing[node]
        after = record(before, kind, self.now * self.config.job_interval_s, probe=probe)
        self.standing[node] = after
        self.scores[node] = after.score
        if after.trust == "quarantined" and before.trust != "quarantined":
            self.quarantines[node] += 1
            self.first_quarantine.setdefault(node, self.assigned[node] + self.probed[node])
            self.probe_interval[node] = QUARANTINE_PROBE_EVERY
            self._schedule_probe(node)
        self._reweight(node)

    def _schedule_probe(self, node: int) -> None:
        self.probe_due.setdefault(self.now + self.probe_interval[node], []).append(node)

    def _probe(self, node: int) -> None:
        self._probe_keys += 1
        key = -self._probe_keys  # probes' truths never collide with real jobs'
        self.probed[node] += 1
        self.stats["probes"] += 1
        got = self.answer(node, key)
        if got is None:
            self._missed(node)
        passed = got == key
        was = self.standing[node].trust
        kind: EventKind = "agreed" if passed else "timed_out" if got is None else "disagreed"
        self._event(node, kind, probe=True)
        # A node quarantined by this very probe was scheduled by _event.
        if was == "quarantined" == self.standing[node].trust and self.alive[node]:
            cap = QUARANTINE_PROBE_EVERY * PROBE_BACKOFF_CAP
            interval = self.probe_interval[node]
            self.probe_interval[node] = QUARANTINE_PROBE_EVERY if passed else min(2 * interval, cap)
            self._schedule_probe(node)

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

    def _assign(self, check: _Check, nodes: list[int], ranking: Ranking, job: int) -> None:
        """Run `nodes` on the job; a late one gets timed_out and its replica goes to the
        next node of the ranking, as the live router re-routes it."""
        queue = list(nodes)
        while queue:
            node = queue.pop(0)
            check.assignments += 1
            self.assigned[node] += 1
            got = self.answer(node, job)
            if got is not None:
                check.replicas.append(Replica(self.ids[node], str(job), "token", got))
                continue
            self._missed(node)
            self._event(node, "timed_out")
            if check.assignments < MAX_ASSIGNMENTS:
                queue.extend(ranking.take(1))

    def _settle(self, check: _Check, ranking: Ranking, job: int) -> Decision:
        """Decide by strict majority, escalating while there is none, up to the cap."""
        while True:
            decision = decide(check.replicas, check.redundancy, same)
            if decision.status == "verified":
                return decision
            more = replication.escalate(check.redundancy)
            if more is None:
                return decision
            fresh = ranking.take(more - check.redundancy)
            if not fresh:
                return decision
            check.redundancy = more
            self._assign(check, fresh, ranking, job)

    def _blame(self, decision: Decision, *, spare: int | None = None) -> list[int]:
        """Events for a checked job; the nodes that disagreed (but `spare`) are returned
        for re-validation of their unchecked results."""
        for node_id in decision.agreeing:
            self._event(self.index[node_id], "agreed")
        failed = [self.index[node_id] for node_id in decision.disagreeing]
        for node in failed:
            self._event(node, "disagreed")
        return [n for n in failed if n != spare]

    def _job(self, job: int) -> None:
        ranking = self.sampler.ranking()
        leader = ranking.take(1)
        if not leader:
            self.stats["failed"] += 1
            return
        k = replication.replicas(self.standing[leader[0]].streak, self.rng)
        check = _Check([], k)
        self._assign(check, leader + ranking.take(k - 1), ranking, job)
        decision = self._settle(check, ranking, job)
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
        if canonical is not None and delivered != job:
            self.stats["wrong_delivered"] += 1
            self.stats["wrong_standing"] += 1
        if self.on_job is not None:
            record_ = JobRecord(
                job, job, tuple(check.replicas), check.redundancy, decision, delivered
            )
            self.on_job(record_)
        if check.redundancy > 1 and decision.status == "verified":
            self._revalidate_all(self._blame(decision))

    def _revalidate_all(self, nodes: list[int]) -> None:
        pending = list(nodes)
        while pending:
            pending.extend(self._revalidate(pending.pop(0)))

    def _revalidate(self, node: int) -> list[int]:
        """Re-run a node's latest unchecked results on two other nodes each, most recent
        first; correct the verdicts that change. Returns the helpers that disagreed."""
        batch = self.unchecked[node][-replication.REVALIDATE_LIMIT :]
        del self.unchecked[node][-replication.REVALIDATE_LIMIT :]
        failed: list[int] = []
        for item in reversed(batch):
            ranking = self.sampler.ranking(exclude=node)
            original = Replica(self.ids[node], str(item.job), "token", item.delivered)
            check = _Check([original], replication.REPLICAS)
            self._assign(check, ranking.take(replication.REPLICAS - 1), ranking, item.job)
            decision = self._settle(check, ranking, item.job)
            self.stats["revalidated"] += 1
            self.stats["revalidation_assignments"] += check.assignments
            if decision.status != "verified" or decision.canonical is None:
                self.stats["revalidation_inconclusive"] += 1
                continue
            failed += self._blame(decision, spare=node)
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
        """Genesis: every node in probation is probed until admitted or quarantined."""
        while True:
            waiting = [n for n, s in enumerate(self.standing) if s.trust == "probation"]
            if not waiting:
                return
            for node in waiting:
                self._probe(node)
            self.stats["probes_admission"] += len(waiting)

    def _tick(self, job: int) -> None:
        self.now = job
        for node in self.drop_due.pop(job, ()):
            self._drop(node)
        for node in self.probe_due.pop(job, ()):
            if self.alive[node] and self.standing[node].trust == "quarantined":
                self._probe(node)

    def run(self) -> dict[str, Any]:
        """Run every job and return the report (JSON-ready)."""
        started = time.perf_counter()
        ttl_jobs = max(1, round(self.config.node_ttl_s / self.config.job_interval_s))
        for node, at in self.crash_at.items():
            self.drop_due.setdefault(at + ttl_jobs, []).append(node)
        self._admit()
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

    def _mode_report(self, mode: Mode) -> dict[str, Any]:
        nodes = [i for i, m in enumerate(self.modes) if m == mode]
        caught = [self.first_quarantine[n] for n in nodes if n in self.first_quarantine]
        free = [self._jobs_done(n) for n in nodes if n not in self.first_quarantine]
        return {
            "nodes": len(nodes),
            "ever_quarantined": len(caught),
            "quarantined_at_end": sum(self.standing[n].trust == "quarantined" for n in nodes),
            "quarantine_episodes": sum(self.quarantines[n] for n in nodes),
            "jobs_until_quarantined": {
                "max": max(caught, default=None),
                "median": statistics.median(caught) if caught else None,
            },
            "never_quarantined": {"count": len(free), "most_jobs": max(free, default=None)},
            "dropped_as_dead": sum(not self.alive[n] for n in nodes),
            "mean_score_at_end": round(float(np.mean(self.scores[nodes])), 4) if nodes else None,
        }

    def report(self) -> dict[str, Any]:
        """The run's figures: see the module docstring of cortensor.tools.simulate."""
        c, s = self.config, self.stats
        jobs = max(c.jobs, 1)
        warm = round(c.jobs * c.warmup)
        rpj = self.replicas_per_job
        honest_caught = [self.ids[n] for n in self.first_quarantine if self.modes[n] == "honest"]
        modes = {m: self._mode_report(m) for m in FAULT_MODES}
        report: dict[str, Any] = {
            "nodes": c.nodes,
            "jobs": c.jobs,
            "seed": c.seed,
            "dishonest": c.dishonest,
            "intermittent_p": c.intermittent_p,
            "probation": c.probation,
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
            "mean_replicas_after_warmup": round(
                float(rpj[warm:].mean()) if c.jobs > warm else 0.0, 4
            ),
            "warmup_jobs": warm,
            "mean_replicas_with_revalidation": round(
                (float(rpj.sum()) + s["revalidation_assignments"]) / jobs, 4
            ),
            "inconclusive_jobs": s["inconclusive"],
            "failed_jobs": s["failed"],
            "probes": {"total": s["probes"], "admission": s["probes_admission"]},
            "modes": modes,
            "honest_wrongly_quarantined": {
                "count": len(honest_caught),
                "ids": sorted(honest_caught),
            },
            "definitions": DEFINITIONS,
            "wall_s": round(self.wall_s, 2),
        }
        report["targets"] = targets(report)
        return report


def targets(report: Mapping[str, Any]) -> dict[str, bool]:
    """The issue's targets, checked against a report."""
    modes = report["modes"]

    def within(mode: str, limit: int) -> bool:
        m = modes[mode]
        caught_in_time = (m["jobs_until_quarantined"]["max"] or 0) <= limit
        # A node not yet quarantined is within the target while it has done fewer jobs.
        free = m["never_quarantined"]
        return caught_in_time and (free["count"] == 0 or free["most_jobs"] < limit)

    return {
        "wrong_delivered_at_most_0.1%": report["wrong_delivered"]["rate"] <= 0.001,
        "mean_replicas_after_warmup_at_most_1.5": report["mean_replicas_after_warmup"] <= 1.5,
        "always_dishonest_quarantined_within_20_jobs": all(
            within(m, 20) for m in sorted(ALWAYS_DISHONEST) if modes[m]["nodes"]
        ),
        "intermittent_quarantined_within_200_jobs": within("intermittent", 200),
        "no_honest_node_quarantined": report["honest_wrongly_quarantined"]["count"] == 0,
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
    bottom.axhline(1.5, linestyle="--", color="grey", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


__all__ = [
    "ALWAYS_DISHONEST",
    "DEFAULT_MIX",
    "FAULT_MODES",
    "JobRecord",
    "Ranking",
    "Sampler",
    "SimConfig",
    "Simulation",
    "fleet_modes",
    "parse_mix",
    "plot",
    "same",
    "simulate",
    "targets",
    "weights",
]
