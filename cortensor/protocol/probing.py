"""Known-answer probes for nodes that are not trusted with real jobs. Pure policy.

A node on probation, or in quarantine, is sent a probe every `probe_interval_s` (or
`quarantine_probe_interval_s`): one of the prepared probes of a model it serves,
recorded as a job of its own with the reference output in its params, so that the
node cannot tell it from a real job. See docs/trust.md.
"""

from __future__ import annotations

import base64
import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from cortensor.catalog import Task
from cortensor.protocol.placement import NodeView
from cortensor.protocol.units import OpenJob
from cortensor.schemas import utcnow
from cortensor.settings import Settings

PROBE_TOP_K = 5
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


class Prober:
    """Which nodes are due a probe, and the probe job each gets."""

    def __init__(self, settings: Settings, rng: random.Random) -> None:
        self.settings, self.rng = settings, rng
        self.probe_set = ProbeSet(source="", probes=[])
        self._sent: dict[str, float] = {}
        """When each node was last sent a probe (monotonic seconds)."""

    def due(self, node: NodeView, now: float) -> bool:
        """Whether a node awaiting admission (or re-admission) gets its next probe now."""
        if node.trust == "active" or not node.live(now, self.settings.node_ttl_s):
            return False
        interval = (
            self.settings.probe_interval_s
            if node.trust == "probation"
            else self.settings.quarantine_probe_interval_s
        )
        return now - self._sent.get(node.node_id, -math.inf) >= interval

    def sent(self, node_id: str, now: float) -> None:
        """Record that a node was just sent a probe."""
        self._sent[node_id] = now

    def job_for(self, node: NodeView) -> OpenJob | None:
        """A probe job on one of the node's models (its deadline still to be set), or
        None when no prepared probe fits the node."""
        choices = [p for m in sorted(node.models) for p in self.probe_set.for_model(m)]
        if not choices:
            return None
        probe = self.rng.choice(choices)
        params: dict[str, Any] = {
            "reference": probe.reference,
            "reference_precision": probe.precision,
        }
        if probe.task == "classify":
            params["top_k"] = probe.top_k
        if probe.language is not None:
            params["language"] = probe.language
        if probe.task == "transcribe":
            params |= {"start_s": 0.0, "end_s": float(probe.reference["duration_s"])}
        return OpenJob(
            job_id=uuid.uuid4(),
            task=probe.task,
            model=probe.model,
            redundancy=1,
            hw_class=node.hw_class,
            inputs=list(probe.inputs),
            deadline_at=utcnow(),
            taken=frozenset(),
            params=params,
            audio=None if probe.audio is None else base64.b64decode(probe.audio),
            probe=True,
        )
