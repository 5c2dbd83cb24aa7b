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
