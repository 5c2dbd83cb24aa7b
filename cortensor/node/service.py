"""What a node does with the assignments it is given, independent of how they are delivered."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog
from numpy.typing import NDArray
from pydantic import ValidationError

from cortensor.catalog import PRECISION, HwClass, Task
from cortensor.node.bridge import NatsBridge
from cortensor.node.faults import Fault
from cortensor.schemas import Assignment, InferenceResult, NodeHeartbeat, utcnow
from cortensor.settings import Settings
from cortensor.topology import Topology

log = structlog.get_logger(__name__)


class Embedder(Protocol):
    """A loaded embedding model."""

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a node announces about itself."""

    node_id: str
    hw_class: HwClass
    model: str
    tasks: tuple[Task, ...] = ("embed",)


class NodeService:
    """Runs assignments on the loaded model and publishes results and heartbeats."""

    def __init__(
        self,
        settings: Settings,
        identity: NodeIdentity,
        embedder: Embedder,
        *,
        fault: Fault | None = None,
        bridge: NatsBridge | None = None,
    ) -> None:
        self.settings, self.identity, self.embedder, self.fault = (
            settings,
            identity,
            embedder,
            fault,
        )
        self.topology = Topology(settings.namespace)
        self.bridge = bridge or NatsBridge(settings.nats_url, name=f"node {identity.node_id}")
        self.capacity = settings.node_threads * settings.node_prefetch
        self.started_at = utcnow()
        self._lock = threading.Lock()
        self._inflight = 0
        self._processed = 0

    def heartbeat(self, status: str = "up") -> bytes:
        """The node's current heartbeat message."""
        with self._lock:
            inflight, processed = self._inflight, self._processed
        return (
            NodeHeartbeat(
                node_id=self.identity.node_id,
                hw_class=self.identity.hw_class,
                precision=PRECISION[self.identity.hw_class],
                tasks=list(self.identity.tasks),
                models=[self.identity.model],
                capacity=self.capacity,
                inflight=inflight,
                processed=processed,
                status="draining" if status == "draining" else "up",
                started_at=self.started_at,
            )
            .model_dump_json()
            .encode()
        )

    def start(self) -> None:
        """Connect to NATS."""
        self.bridge.start()

    def announce(self) -> None:
        """Start heartbeats: from now on routers may send work."""
        self.bridge.start_heartbeats(
            self.topology.heartbeat_subject(self.identity.node_id),
            self.heartbeat,
            self.settings.heartbeat_interval_s,
        )

    def drain(self) -> None:
        """Tell routers the node is leaving; work already queued still completes."""
        subject = self.topology.heartbeat_subject(self.identity.node_id)
        self.bridge.stop_heartbeats(last_words=(subject, self.heartbeat("draining")))

    def close(self) -> None:
        """Close the NATS connection once no task runs any more."""
        self.bridge.close()

    def compute(self, assignment: Assignment) -> InferenceResult:
        """Embed the assignment's inputs (wrongly, when a fault strikes)."""
        started = time.perf_counter()
        common: dict[str, Any] = {
            "assignment_id": assignment.assignment_id,
            "job_id": assignment.job_id,
            "node_id": self.identity.node_id,
            "model": assignment.model,
            "hw_class": self.identity.hw_class,
            "precision": PRECISION[self.identity.hw_class],
        }
        try:
            vectors = self.embedder.embed(assignment.inputs)
        except Exception as exc:  # the model failed on this input; report, do not crash
            log.exception("inference failed", assignment_id=str(assignment.assignment_id))
            return InferenceResult(**common, error=f"{type(exc).__name__}: {exc}")
        if self.fault is not None and self.fault.strikes():
            vectors = self.fault.corrupt(vectors)
        elapsed = (time.perf_counter() - started) * 1000
        return InferenceResult(**common, embeddings=vectors.tolist(), elapsed_ms=elapsed)

    def _accept(self, payload: Any) -> Assignment | str:
        """The assignment to run, or why it is dropped."""
        try:
            assignment = Assignment.model_validate(payload)
        except ValidationError as exc:
            log.error("malformed assignment dropped", error=str(exc))
            return "malformed"
        if assignment.node_id != self.identity.node_id:
            log.error("assignment for another node dropped", node_id=assignment.node_id)
            return "misrouted"
        if assignment.deadline_at <= utcnow():
            # The router has re-routed it already; the work would be wasted.
            return "expired"
        return assignment

    def handle(self, payloads: Sequence[Any]) -> str:
        """Run the assignments delivered in one task; returns what happened, for the log.

        Returns only after JetStream acknowledged every result, so the caller acks the
        task after the results are durable.
        """
        outcomes: Counter[str] = Counter()
        ready: list[Assignment] = []
        for payload in payloads:
            accepted = self._accept(payload)
            if isinstance(accepted, str):
                outcomes[accepted] += 1
            else:
                ready.append(accepted)
        if not ready:
            return _summary(outcomes)
        with self._lock:
            self._inflight += len(ready)
        try:
            results = [self.compute(a) for a in ready]
            latest = max(a.deadline_at for a in ready)
            self.bridge.publish_durably(
                [
                    (
                        self.topology.results_subject(str(r.job_id)),
                        r.model_dump_json().encode(),
                        str(r.assignment_id),
                    )
                    for r in results
                ],
                within=max((latest - utcnow()).total_seconds(), 1.0),
            )
        finally:
            with self._lock:
                self._inflight -= len(ready)
                self._processed += len(ready)
        outcomes.update("error" if r.error else "done" for r in results)
        return _summary(outcomes)


def _summary(outcomes: Counter[str]) -> str:
    return " ".join(f"{kind}={count}" for kind, count in sorted(outcomes.items()))
