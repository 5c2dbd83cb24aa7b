"""Known-answer probes: when a node is probed, with what, and the job that carries it.
Pure policy.

Every node is probed: one on probation or in quarantine gets nothing else, an active
one gets a probe now and then among its real jobs (`ProbeSchedule`, at random
exponential gaps). A probe is the input of a recent real job that at least two nodes
agreed on, sent to a node that never held it, with the verified answer as its
reference (`ProbePool`); the prepared probes (`ProbeSet`) only start a network that has
no such traffic yet. `probe_job` makes the job, identical in form to a real one: the
reference stays in the ledger's params, which no node sees. See docs/trust.md.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from cortensor.catalog import DEFAULT_MAX_TOKENS, PRECISION, Task
from cortensor.protocol.placement import NodeView
from cortensor.protocol.units import OpenJob
from cortensor.schemas import DEFAULT_DEADLINE_S, DEFAULT_TOP_K

PROBE_TOP_K = DEFAULT_TOP_K
"""The top_k of a classify probe."""


class Probe(BaseModel):
    """One probe job's input and the reference output it must match."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Task
    model: str
    inputs: list[str] = []
    audio: str | None = None
    top_k: int = PROBE_TOP_K
    language: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    """The new tokens a generate probe asks for."""
    reference: Any
    precision: str = "fp32"


class ProbeSet(BaseModel):
    """Every probe, and the manifest files they were computed from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    """sha256 over the sha256 of the variants used: a changed model makes them stale."""
    probes: list[Probe]

    def for_model(self, model: str) -> list[Probe]:
        """The probes of one model."""
        return [p for p in self.probes if p.model == model]


@dataclass(frozen=True)
class ProbePolicy:
    """How often each kind of node is probed.

    Every gap between two probes of a node is drawn from an exponential distribution
    with the mean below, so that the time since the last probe says nothing about when
    the next one comes (the process is memoryless), and a node cannot tell a probe from
    a real job by when it arrives.
    """

    probation_mean_s: float = 1.0
    """Mean gap between probes of a node on probation (it gets nothing else)."""
    quarantine_mean_s: float = 5.0
    """Mean gap between probes of a quarantined node that passed its last probe."""
    quarantine_backoff: float = 2.0
    """Factor on the quarantine gap per failed probe in a row, so that a node that keeps
    failing costs the network less and less."""
    quarantine_max_s: float = 120.0
    """Cap of the quarantine gap's mean, however many probes failed."""
    active_mean_s: float = 300.0
    """Mean gap between probes of an active node (math.inf: active nodes are not probed)."""

    def __post_init__(self) -> None:
        for name in ("probation_mean_s", "quarantine_mean_s", "quarantine_max_s", "active_mean_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ProbePolicy.{name} must be positive")
        if self.quarantine_backoff < 1:
            raise ValueError("ProbePolicy.quarantine_backoff must be at least 1")
        if self.quarantine_max_s < self.quarantine_mean_s:
            raise ValueError("ProbePolicy.quarantine_max_s must be at least quarantine_mean_s")

    def mean_gap(self, trust: str, failures: int = 0) -> float:
        """The mean gap before the next probe of a node in state `trust` whose last
        `failures` probes failed in a row."""
        if trust == "probation":
            return self.probation_mean_s
        if trust == "quarantined":
            # Multiplied step by step, never raised to a power: backoff**failures
            # overflows long before a node stops failing.
            gap = self.quarantine_mean_s
            for _ in range(failures):
                if gap >= self.quarantine_max_s or self.quarantine_backoff == 1:
                    break
                gap *= self.quarantine_backoff
            return min(gap, self.quarantine_max_s)
        if trust == "active":
            return self.active_mean_s
        raise ValueError(f"unknown trust state {trust!r}")


@dataclass
class _Due:
    """One node's place in the schedule."""

    trust: str
    at: float
    """When its next probe is due (the caller's clock)."""
    failures: int = 0
    """Its failed probes in a row."""


@dataclass
class ProbeSchedule:
    """When each node gets its next probe: per-node state, no clock and no randomness
    of its own (the caller passes `now` and the random source).

    A node seen for the first time, or seen in a new trust state, has its next probe
    drawn from that moment; `sent` draws the gap after each probe; `outcome` counts the
    failures in a row that lengthen a quarantined node's gaps.
    """

    policy: ProbePolicy
    rng: random.Random
    node_ttl_s: float = math.inf
    """A node whose last heartbeat is older than this is not probed."""
    _nodes: dict[str, _Due] = field(default_factory=dict, init=False, repr=False)

    def gap(self, trust: str, failures: int = 0) -> float:
        """One random gap (exponential, positive) for a node in this state."""
        mean = self.policy.mean_gap(trust, failures)
        if math.isinf(mean):
            return math.inf
        # expovariate can return 0.0 (when random() is 0): a gap is never zero.
        return max(self.rng.expovariate(1.0 / mean), math.ulp(mean))

    def due(self, node: NodeView, now: float) -> bool:
        """Whether `node` should be sent a probe now."""
        if not node.live(now, self.node_ttl_s):
            return False
        state = self._nodes.get(node.node_id)
        if state is None:
            state = self._nodes[node.node_id] = _Due(node.trust, now + self.gap(node.trust))
        elif state.trust != node.trust:
            state.trust = node.trust
            if node.trust != "quarantined":
                state.failures = 0
            state.at = now + self.gap(node.trust, state.failures)
        return now >= state.at

    def sent(self, node_id: str, now: float) -> None:
        """Record that a node was sent a probe at `now`: its next one is a fresh gap away."""
        state = self._nodes.get(node_id)
        if state is None:
            raise KeyError(f"node {node_id} was never asked about (call due first)")
        state.at = now + self.gap(state.trust, state.failures)

    def outcome(self, node_id: str, passed: bool) -> None:
        """Record how a node's probe was judged: a failure lengthens its next gaps while
        it is quarantined (up to the cap); a pass resets them."""
        state = self._nodes.get(node_id)
        if state is None:
            return  # judged after this router forgot it (restart): nothing to adjust
        state.failures = 0 if passed else state.failures + 1

    def next_at(self, node_id: str) -> float | None:
        """When the node's next probe is due, or None before it was first seen."""
        state = self._nodes.get(node_id)
        return None if state is None else state.at

    def failures(self, node_id: str) -> int:
        """The node's failed probes in a row, as this schedule knows them."""
        state = self._nodes.get(node_id)
        return 0 if state is None else state.failures

    def forget(self, node_id: str) -> None:
        """Drop a node that left the network."""
        self._nodes.pop(node_id, None)

    def keep_only(self, node_ids: Iterable[str]) -> None:
        """Forget every node but these (the ones still known), so that a long-running
        router does not keep the state of every node that ever came and went."""
        keep = set(node_ids)
        for gone in [n for n in self._nodes if n not in keep]:
            del self._nodes[gone]


OPTIONS = ("top_k", "language", "start_s", "end_s", "max_tokens", "roles")
"""The params of a job that a probe made from it keeps: what the node is told (top_k,
language, max_tokens, a conversation's roles) and what its deadline is computed from (an
audio span, the tokens asked)."""


@dataclass(frozen=True, slots=True)
class PoolProbe:
    """An input whose right answer the network knows, ready to be sent as a probe."""

    key: str
    """What it was drawn from: a verified job's id, or `prepared:<digest>` for a
    prepared probe. Every probe job made from it records this key (params `source`)."""
    task: str
    model: str
    inputs: tuple[str, ...]
    audio: bytes | None
    options: Mapping[str, Any]
    """The source job's task options and audio span (see OPTIONS)."""
    reference: Any
    """The verified (canonical) output, as JSON data."""
    precision: str
    """The precision the reference was computed at, for the comparators' tolerances."""
    deadline_s: float
    """The time the source job's user gave it: a probe job gets the same."""
    holders: frozenset[str] = frozenset()
    """Nodes that held an assignment of the source job or of a probe made from it."""
    agreed_at: frozenset[str] = frozenset()
    """The precisions (fp32, int8, ...) of the results that agreed on the answer: an
    honest node of one of them is known to match it. Prepared probes were checked at
    every precision, and leave this empty."""

    @classmethod
    def prepared(cls, probe: Probe) -> PoolProbe:
        """A prepared probe, keyed by its content so that a node gets each once."""
        digest = hashlib.sha256(
            f"{probe.model}\n{probe.inputs}\n{probe.audio}\n{probe.language}".encode()
        ).hexdigest()[:32]
        options: dict[str, Any] = {}
        if probe.task == "classify":
            options["top_k"] = probe.top_k
        if probe.task == "generate":
            options["max_tokens"] = probe.max_tokens
        if probe.language is not None:
            options["language"] = probe.language
        if probe.task == "transcribe":
            options |= {"start_s": 0.0, "end_s": float(probe.reference["duration_s"])}
        return cls(
            key=f"prepared:{digest}",
            task=probe.task,
            model=probe.model,
            inputs=tuple(probe.inputs),
            audio=None if probe.audio is None else base64.b64decode(probe.audio),
            options=options,
            reference=probe.reference,
            precision=probe.precision,
            deadline_s=DEFAULT_DEADLINE_S,
        )


DRAW_TRIES = 8
"""Random indices `draw` tries before it lists every admissible one."""


def draw(
    count: int, admissible: Callable[[int], bool], rng: random.Random, *, tries: int = DRAW_TRIES
) -> int | None:
    """An index of range(count) drawn uniformly among those `admissible` accepts, or None
    when it accepts none.

    Rejection first: up to `tries` indices drawn uniformly, the first admissible one
    kept; only when all of them are refused are the admissible indices listed and one
    drawn from them. Each way the index is uniform among the admissible ones, and the
    usual draw (most probes may go to most nodes) costs a few calls instead of a pass
    over the pool: the simulation draws from thousands of sources per probe.
    """
    for _ in range(tries if count > 0 else 0):
        index = rng.randrange(count)
        if admissible(index):
            return index
    found = [i for i in range(count) if admissible(i)]
    return rng.choice(found) if found else None


class ProbePool:
    """The probes a router can send, and who must never get which.

    The rules of `pick`: a probe goes only to a node serving its model that never held
    its source (nor a probe made from it); probes drawn from verified traffic come first,
    and a model's prepared probes are used only while the pool has no traffic of that
    model (a network without history), since anyone can read them. Among the traffic
    probes, those whose answer a node of the same precision agreed on are preferred, so
    that an honest node is not failed by a tolerance between precisions that its own
    precision was never seen to meet on that input.
    """

    def __init__(self, bootstrap: Iterable[Probe] = ()) -> None:
        self._traffic: dict[str, PoolProbe] = {}
        self._bootstrap = {p.key: p for p in map(PoolProbe.prepared, bootstrap)}
        self._sent: dict[str, set[str]] = {}
        """Nodes sent a probe of each key since the ledger was last read: the next read
        may have started before the probe job was written, and must not forget them."""
        self._order: list[PoolProbe] = []
        """Every probe that may go out, sorted by key once per read (`pick` indexes it)."""
        self._index()

    def _index(self) -> None:
        traffic = self.models()
        pool = [*self._traffic.values()] + [
            p for p in self._bootstrap.values() if p.model not in traffic
        ]
        self._order = sorted(pool, key=lambda p: p.key)

    def refresh(self, traffic: Iterable[PoolProbe], holders: Mapping[str, Iterable[str]]) -> None:
        """Replace the traffic probes with a fresh read of the ledger; `holders` adds,
        per key, the nodes that held probes made from it (prepared ones included)."""
        self._traffic = {p.key: p for p in traffic}
        merged = {**self._traffic, **self._bootstrap}
        for key, nodes in holders.items():
            if key in self._traffic:
                probe = self._traffic[key]
                self._traffic[key] = replace(probe, holders=probe.holders | set(nodes))
            elif key in self._bootstrap:
                probe = self._bootstrap[key]
                self._bootstrap[key] = replace(probe, holders=probe.holders | set(nodes))
        self._sent = {k: v for k, v in self._sent.items() if k in merged}
        self._index()

    def __len__(self) -> int:
        return len(self._traffic)

    def keys(self) -> list[str]:
        """The keys of every probe, prepared ones included."""
        return [*self._traffic, *self._bootstrap]

    def models(self) -> set[str]:
        """The models with probes drawn from traffic."""
        return {p.model for p in self._traffic.values()}

    def held(self, probe: PoolProbe, node_id: str) -> bool:
        """Whether `node_id` held the probe's source or a probe made from it."""
        return node_id in probe.holders or node_id in self._sent.get(probe.key, ())

    def _fits(self, node: NodeView) -> Callable[[PoolProbe], bool]:
        return lambda p: p.model in node.models and not self.held(p, node.node_id)

    def choices(self, node: NodeView) -> list[PoolProbe]:
        """Every probe `node` may be sent now (see the class's rules), by key."""
        fits = [p for p in self._order if self._fits(node)(p)]
        precision = PRECISION.get(node.hw_class)  # type: ignore[call-overload]
        alike = [p for p in fits if precision in p.agreed_at]
        return alike or fits

    def pick(self, node: NodeView, rng: random.Random) -> PoolProbe | None:
        """A probe for `node`, drawn uniformly among its `choices` (`draw`), or None when
        none may go to it."""
        order, fits = self._order, self._fits(node)
        precision = PRECISION.get(node.hw_class)  # type: ignore[call-overload]
        index = draw(len(order), lambda i: fits(order[i]) and precision in order[i].agreed_at, rng)
        if index is None:
            index = draw(len(order), lambda i: fits(order[i]), rng)
        return None if index is None else order[index]

    def sent(self, probe: PoolProbe, node_id: str) -> None:
        """Record that a probe of this key went to `node_id`."""
        self._sent.setdefault(probe.key, set()).add(node_id)


def probe_job(probe: PoolProbe, node: NodeView, job_id: UUID, now: datetime) -> OpenJob:
    """The job that sends `probe` to `node`: a whole job with one replica, on the node's
    class, with the source job's options and time; its params add the reference and the
    source, which stay in the ledger (an Assignment carries only the task's fields).

    `job_id` comes from the caller: a real job's id is a random UUID drawn by its client,
    and a probe's must be one too (not one from a seeded generator a node could learn).
    """
    params: dict[str, Any] = {
        **{k: v for k, v in probe.options.items() if k in OPTIONS},
        "reference": probe.reference,
        "reference_precision": probe.precision,
        "source": probe.key,
    }
    return OpenJob(
        job_id=job_id,
        task=probe.task,
        model=probe.model,
        redundancy=1,
        hw_class=node.hw_class,
        inputs=list(probe.inputs),
        deadline_at=now + timedelta(seconds=probe.deadline_s),
        taken=frozenset(),
        params=params,
        audio=probe.audio,
        probe=True,
    )
