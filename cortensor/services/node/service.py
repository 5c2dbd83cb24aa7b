"""What a node does with the assignments it is given, independent of how they are delivered."""

from __future__ import annotations

import base64
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from cortensor.adapters.topology import Topology
from cortensor.catalog import PRECISION, TASK_OF, HwClass, Task
from cortensor.inference.runtimes import Classifier, Embedder, Generator, Runtime, Transcriber
from cortensor.protocol.outages import EXTENSION_S
from cortensor.protocol.signing import result_msg_id, sign, signature_headers
from cortensor.schemas import (
    MAX_ERROR_CHARS,
    Assignment,
    ChatTurn,
    InferenceResult,
    NodeHeartbeat,
    printable,
    utcnow,
)
from cortensor.services.node import batching
from cortensor.services.node.batching import Shared
from cortensor.services.node.bridge import NatsBridge, Signed
from cortensor.services.node.faults import CRASH_EXIT_CODE, Fault, slow_sleep_s
from cortensor.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a node announces about itself."""

    node_id: str
    hw_class: HwClass
    models: tuple[str, ...]
    tasks: tuple[Task, ...]
    builds: Mapping[str, str] = field(default_factory=dict)
    """The prepared variant behind each model (for a classifier head, its embedding's)."""


def answer(runtime: Runtime, assignment: Assignment) -> Any:
    """The runtime's true answer to the assignment.

    The node checked that `runtime` serves the assignment's model, and a model serves
    one task (catalog.TASK_OF), so the runtime has the method the task needs.
    """
    if assignment.task == "embed":
        return cast(Embedder, runtime).embed(assignment.inputs)
    if assignment.task == "classify":
        return cast(Classifier, runtime).classify(assignment.inputs, assignment.top_k)
    if assignment.task == "generate":
        return cast(Generator, runtime).generate(conversations(assignment), assignment.max_tokens)
    wav = base64.b64decode(assignment.audio or "")
    return cast(Transcriber, runtime).transcribe(wav, assignment.language)


def conversations(assignment: Assignment) -> list[list[ChatTurn]]:
    """What a generate assignment asks to continue: its conversation, or each prompt as
    a user's message of its own."""
    if assignment.messages is not None:
        return [list(assignment.messages)]
    return [[ChatTurn(role="user", content=text)] for text in assignment.inputs]


def output(
    runtime: Runtime, assignment: Assignment, truth: Any, fault: Fault | None
) -> dict[str, Any]:
    """The output field of a result: `truth`, the runtime's answer, made wrong when
    `fault` strikes (decided once the true answer is known: an adapting fault weighs it)."""
    wrong = fault.wrong_answers(assignment, truth) if fault is not None else None
    if assignment.task == "embed":
        return {"embeddings": (wrong.corrupt(truth) if wrong else truth).tolist()}
    if assignment.task == "classify":
        if wrong:
            truth = wrong.corrupt_classes(truth, getattr(runtime, "labels", ()))
        return {"classes": truth}
    if assignment.task == "generate":
        return {"generations": wrong.corrupt_generations(truth) if wrong else truth}
    return {"transcript": wrong.corrupt_transcript(truth) if wrong else truth}


class NodeService:
    """Runs assignments on the loaded model and publishes results and heartbeats."""

    def __init__(
        self,
        settings: Settings,
        identity: NodeIdentity,
        runtimes: Mapping[str, Runtime],
        *,
        bridge: NatsBridge,
        key: Ed25519PrivateKey,
        fault: Fault | None = None,
    ) -> None:
        """`bridge` is the node's NATS side (results and heartbeats), given from outside
        like every service's adapters; `start` connects it. `key` signs every result and
        heartbeat: routers and guards refuse what the node id's bound key did not sign."""
        self.settings, self.identity, self.runtimes, self.fault = (
            settings,
            identity,
            dict(runtimes),
            fault,
        )
        self.topology = Topology(settings.namespace)
        self.bridge = bridge
        self.key = key
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
                models=list(self.identity.models),
                capacity=self.capacity,
                inflight=inflight,
                processed=processed,
                status="draining" if status == "draining" else "up",
                started_at=self.started_at,
            )
            .model_dump_json()
            .encode()
        )

    def signed(self, payload: bytes) -> Signed:
        """`payload` with the headers that carry the node's signature of it."""
        return payload, signature_headers(sign(self.key, payload))

    def start(self) -> None:
        """Connect to NATS."""
        self.bridge.start()

    def announce(self) -> None:
        """Start heartbeats: from now on routers may send work."""
        self.bridge.start_heartbeats(
            self.topology.heartbeat_subject(self.identity.node_id),
            lambda: self.signed(self.heartbeat()),
            self.settings.heartbeat_interval_s,
        )

    def drain(self) -> None:
        """Tell routers the node is leaving; work already queued still completes."""
        subject = self.topology.heartbeat_subject(self.identity.node_id)
        self.bridge.stop_heartbeats(last_words=(subject, self.signed(self.heartbeat("draining"))))

    def close(self) -> None:
        """Close the NATS connection once no task runs any more."""
        self.bridge.close()

    def compute(self, assignment: Assignment, shared: Shared | None = None) -> InferenceResult:
        """Run the assignment on its model (wrongly, when a fault strikes). `shared` is its
        true answer and the seconds spent on it, when its texts ran with other
        assignments' (batching.answer_together)."""
        started = time.perf_counter()
        common: dict[str, Any] = {
            "assignment_id": assignment.assignment_id,
            "job_id": assignment.job_id,
            "node_id": self.identity.node_id,
            "task": assignment.task,
            "model": assignment.model,
            "hw_class": self.identity.hw_class,
            "precision": PRECISION[self.identity.hw_class],
            "build": self.identity.builds.get(assignment.model, ""),
        }
        try:
            runtime = self.runtimes[assignment.model]
            truth = shared[0] if shared is not None else answer(runtime, assignment)
            result = output(runtime, assignment, truth, self.fault)
        except Exception as exc:  # the model failed on this input; report, do not crash
            log.exception("inference failed", assignment_id=str(assignment.assignment_id))
            # Cut and escaped to what the guard accepts (schemas.ErrorText).
            error = printable(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS)
            return InferenceResult(**common, error=error)
        elapsed = time.perf_counter() - started + (shared[1] if shared is not None else 0.0)
        return InferenceResult(**common, **result, elapsed_ms=elapsed * 1000)

    def compute_all(self, assignments: Sequence[Assignment]) -> list[InferenceResult]:
        """The results of `assignments`, in order. The texts of embed and classify
        assignments for one model share model calls when the runtime allows it; the
        answers are the same as one assignment at a time."""
        shared: dict[int, Shared] = {}
        for group in batching.groups(assignments, self.runtimes):
            together = [assignments[i] for i in group]
            try:
                answers = batching.answer_together(self.runtimes[together[0].model], together)
            except Exception:  # one bad input must not fail the others: run each alone
                log.exception(
                    "shared model call failed; running its assignments one at a time",
                    assignment_ids=[str(a.assignment_id) for a in together],
                )
                continue
            shared.update(zip(group, answers, strict=True))
        return [self.compute(a, shared.get(i)) for i, a in enumerate(assignments)]

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
        if assignment.model not in self.runtimes or TASK_OF[assignment.model] != assignment.task:
            log.error("assignment for a model not served here dropped", model=assignment.model)
            return "unserved"
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
            results = self.compute_all(ready)
            if self.fault is None:
                self._publish(ready, results)
            else:
                self._publish_faultily(self.fault, ready, results)
        finally:
            with self._lock:
                self._inflight -= len(ready)
                self._processed += len(ready)
        outcomes.update("error" if r.error else "done" for r in results)
        return _summary(outcomes)

    def _publish(
        self, assignments: Sequence[Assignment], results: Sequence[InferenceResult]
    ) -> None:
        """Publish the results, signed, and wait until JetStream stored them.

        A result's msg id is derived from its signature: a retry of the same bytes is
        deduplicated, and no peer can take the id first (it cannot sign these bytes)."""
        if not results:
            return
        latest = max(a.deadline_at for a in assignments)
        messages = []
        for r in results:
            payload = r.model_dump_json().encode()
            signature = sign(self.key, payload)
            subject = self.topology.results_subject(str(r.job_id), node_id=self.identity.node_id)
            messages.append(
                (subject, payload, result_msg_id(signature), signature_headers(signature))
            )
        # Past the deadline too: a result held up by a NATS outage still counts, for
        # the router renews an assignment an outage overlapped and the guard gives a
        # job whose deadline fell in one EXTENSION_S more (cortensor.protocol.outages).
        left = max((latest - utcnow()).total_seconds(), 0.0)
        self.bridge.publish_durably(messages, within=left + EXTENSION_S)

    def _publish_faultily(
        self, fault: Fault, ready: Sequence[Assignment], results: Sequence[InferenceResult]
    ) -> None:
        """Publish as a slow or crashing node does (as any other node for other faults)."""
        if any([fault.crashes() for _ in ready]):  # a draw for each job
            log.warning("crash fault: the node dies mid-task", jobs=[str(a.job_id) for a in ready])
            for stream in (sys.stdout, sys.stderr):  # os._exit flushes nothing
                stream.flush()
            os._exit(CRASH_EXIT_CODE)
        held = [fault.delays() for _ in ready]
        self._publish(
            [a for a, h in zip(ready, held, strict=True) if not h],
            [r for r, h in zip(results, held, strict=True) if not h],
        )
        late = [a for a, h in zip(ready, held, strict=True) if h]
        if late:
            wait = slow_sleep_s(max(a.deadline_at for a in late), utcnow())
            log.warning("slow fault: holding results past the deadline", wait_s=round(wait, 3))
            time.sleep(wait)
            self._publish(late, [r for r, h in zip(results, held, strict=True) if h])


def _summary(outcomes: Counter[str]) -> str:
    return " ".join(f"{kind}={count}" for kind, count in sorted(outcomes.items()))
