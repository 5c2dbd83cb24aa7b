"""Turning a job's replicas into a verdict and reputation events. Pure logic."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from cortensor.comparators import COMPARATORS
from cortensor.consensus import Replica, decide
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
    decision = decide(case.replicas, case.redundancy, COMPARATORS[case.task])
    assignment_of = {r.node_id: r.assignment_id for r in case.replicas}
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
