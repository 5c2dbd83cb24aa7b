"""Turning a job's replicas into a verdict and reputation events. Pure logic."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from cortensor.protocol.comparators import COMPARATORS
from cortensor.protocol.consensus import Replica, decide
from cortensor.schemas import Verdict

Event = tuple[str, str, str]
"""(node_id, assignment_id, kind) of one reputation event."""


@dataclass(frozen=True, slots=True)
class Case:
    """Everything the guard weighs when it decides a job."""

    job_id: UUID
    task: str
    model: str
    redundancy: int
    replicas: list[Replica]
    """Every counted result, in order of arrival."""
    timed_out: list[tuple[str, str]] = field(default_factory=list)
    """(assignment_id, node_id) of every replica that missed its deadline."""
    parent_id: UUID | None = None
    """Set when the job is one part of a split job."""
    part: int | None = None
    auto: bool = False
    """The network chose the redundancy: a lone replica is accepted unchecked."""
    reference: Any = None
    """A known-answer probe's reference output (JSON data); None for a real job."""
    reference_precision: str = "fp32"


def judge(case: Case) -> tuple[Verdict, list[Event]]:
    """The verdict on a job and one reputation event per replica it had."""
    events: list[Event] = [(node, assignment, "timed_out") for assignment, node in case.timed_out]
    late = [node for _, node in case.timed_out]
    common: dict[str, Any] = {
        "job_id": case.job_id,
        "task": case.task,
        "model": case.model,
        "replicas": len(case.replicas),
        "timed_out": late,
        "parent_id": case.parent_id,
        "part": case.part,
    }
    if not case.replicas:
        reason = f"no node returned a result before the deadline ({len(late)} timed out)"
        return Verdict(status="failed", reason=reason, **common), events
    if case.reference is not None:
        verdict, kind = _judge_probe(case, common)
        answer = case.replicas[0]
        return verdict, [*events, (answer.node_id, answer.assignment_id, kind)]
    decision = decide(case.replicas, case.redundancy, COMPARATORS[case.task])
    assignment_of = {r.node_id: r.assignment_id for r in case.replicas}
    if not unchecked(case):
        events += [(node, assignment_of[node], "agreed") for node in decision.agreeing]
        events += [(node, assignment_of[node], "disagreed") for node in decision.disagreeing]
    canonical = decision.canonical
    verdict = Verdict(
        status=decision.status,
        reason=decision.reason,
        canonical_result_id=UUID(canonical.result_id) if canonical is not None else None,
        agreeing=list(decision.agreeing),
        disagreeing=list(decision.disagreeing),
        **common,
    )
    return (verdict if canonical is None else verdict.with_output(canonical.output)), events


def unchecked(case: Case) -> bool:
    """Whether the case is one result accepted alone (adaptive replication): no other
    node checked it, so it earns its node no event until a re-validation does."""
    return case.auto and case.redundancy == 1 and case.reference is None


def _judge_probe(case: Case, common: dict[str, Any]) -> tuple[Verdict, str]:
    """A probe's verdict, and its node's event: does the answer match the reference?"""
    answer = case.replicas[0]
    compare = COMPARATORS[case.task]
    passed = answer.error is None and compare(
        case.reference, case.reference_precision, answer.output, answer.precision
    )
    if passed:
        reason = "probe: the answer matches the reference"
        verdict = Verdict(status="verified", reason=reason, agreeing=[answer.node_id], **common)
    else:
        reason = "probe: the answer differs from the reference"
        verdict = Verdict(status="failed", reason=reason, disagreeing=[answer.node_id], **common)
    return verdict, "agreed" if passed else "disagreed"


def score_late(task: str, canonical: Replica, late: list[Replica]) -> list[Event]:
    """Events for replicas that arrived after their job was verified: each is held
    against the canonical answer, so a node cannot dodge a check by being slow."""
    compare = COMPARATORS[task]
    return [
        (
            r.node_id,
            r.assignment_id,
            "agreed"
            if r.error is None
            and compare(canonical.output, canonical.precision, r.output, r.precision)
            else "disagreed",
        )
        for r in late
    ]
