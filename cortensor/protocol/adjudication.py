"""Turning a job's replicas into a decision: wait, escalate, or a verdict with its
reputation events. Pure logic: the ledger loads a Case, calls `adjudicate`, and applies
the Outcome it returns without deciding anything itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from cortensor.protocol.comparators import COMPARATORS
from cortensor.protocol.consensus import Decision, Replica, decide
from cortensor.protocol.planning import replicas_due
from cortensor.protocol.replication import REPLICAS, REVALIDATE_LIMIT, escalate
from cortensor.schemas import ANONYMOUS, Verdict

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
    pending: int = 0
    """Replicas still out (assigned, neither answered nor timed out)."""
    first: Verdict | None = None
    """The verdict the job was given before, when this is its re-validation."""
    expired: bool = False
    """The job's deadline has passed: decide with what is there, nothing more will come."""
    owner: str = ANONYMOUS
    """The client that published the job, whose verdict it is."""


@dataclass(frozen=True, slots=True)
class Wait:
    """No decision yet: the replicas needed for one are out, or are to be sent."""

    due: int = 0
    """Replicas the router is to send now: an `auto` job's checks once its leader has
    answered. Zero when everything needed is on its way."""


@dataclass(frozen=True, slots=True)
class Escalate:
    """A split vote below the cap: the job needs more replicas."""

    redundancy: int
    """The job's new redundancy; the router sends the replicas it lacks."""


@dataclass(frozen=True, slots=True)
class Reopen:
    """Re-validate the unchecked results of nodes a verdict caught."""

    nodes: tuple[str, ...]
    limit: int = REVALIDATE_LIMIT
    """The most recent unchecked results per call, at most."""
    redundancy: int = REPLICAS
    """Replicas each reopened job is to have."""


@dataclass(frozen=True, slots=True)
class Conclude:
    """A decision to record."""

    verdict: Verdict
    events: tuple[Event, ...]
    unchecked: bool = False
    """The verdict rests on one replica that nobody checked (re-validated if its node
    later fails a check)."""
    reopen: Reopen | None = None
    revision: bool = False
    """The verdict replaces an earlier one, as its next revision."""
    keep_first: bool = False
    """A re-validation ended without a verdict: the first one (`verdict`) stands,
    still unchecked; `events` are the checkers' timeouts."""
    publish: bool = True
    """Whether the verdict goes on the verdicts stream. Every verdict does, a probe's too:
    one left unpublished would tell its node, by its absence, which of its jobs was a
    probe, so a probe's verdict reads like a real job's instead (see _judge_probe)."""


Outcome = Wait | Escalate | Conclude
"""Exactly one of: wait, escalate, conclude."""


def adjudicate(case: Case) -> Outcome:
    """What to do with a job whose replicas changed, or whose deadline passed.

    Before the deadline a job is decided as soon as its outcome is certain: a strict
    majority of its redundancy agrees, or every replica it asked for is in. A split vote
    then escalates to more replicas up to the cap (replication.escalate); at the cap
    the job concludes inconclusive. At the deadline, see `at_deadline`.
    """
    if case.expired:
        return at_deadline(case)
    verdict, events = judge(case)
    if verdict.status != "verified" and len(case.replicas) < case.redundancy:
        answered, live = len(case.replicas), len(case.replicas) + case.pending
        return Wait(replicas_due(case.redundancy, auto=case.auto, live=live, answered=answered))
    if verdict.status == "inconclusive":
        more = escalate(case.redundancy)
        if more is not None:
            return Escalate(more)
    return _conclude(case, verdict, events)


def at_deadline(case: Case) -> Conclude:
    """The decision on a job whose deadline has passed, with the replicas it has; the
    missing ones count as timed out. A re-validation that found no verdict by then
    (its checkers never answered) keeps the first verdict, still unchecked."""
    verdict, events = judge(case)
    if case.first is not None and verdict.status != "verified":
        timeouts = tuple(e for e in events if e[2] == "timed_out")
        return Conclude(case.first, timeouts, unchecked=True, keep_first=True)
    return _conclude(case, verdict, events)


def _conclude(case: Case, verdict: Verdict, events: Sequence[Event]) -> Conclude:
    """A verdict to record: the first, or the next revision of a re-validated one. Nodes
    it catches (in the minority of a real job, or failing a probe) have their unchecked
    results reopened: a node that cheats on what it takes for real work is as suspect on
    what it ran alone."""
    nodes = caught(events)
    reopen = Reopen(nodes) if nodes else None
    if case.first is not None:
        revised = _revised(case.first, verdict)
        return Conclude(revised, tuple(events), reopen=reopen, revision=True)
    return Conclude(verdict, tuple(events), unchecked=unchecked(case), reopen=reopen)


def caught(events: Sequence[Event]) -> tuple[str, ...]:
    """The nodes a decision's events show wrong (`disagreed`), once each in order: their
    unchecked results are to be re-validated."""
    return tuple(dict.fromkeys(node for node, _, kind in events if kind == "disagreed"))


def _revised(first: Verdict, verdict: Verdict) -> Verdict:
    """The verdict of a re-validated job, as the next revision of its first verdict."""
    held = first.agreeing[0] if first.agreeing else ""
    outcome = "stands" if held in verdict.agreeing else "was wrong and is corrected"
    return verdict.model_copy(
        update={
            "revision": first.revision + 1,
            "reason": f"re-validated: {verdict.reason}; the first answer, by {held}, {outcome}",
        }
    )


def judge(case: Case) -> tuple[Verdict, list[Event]]:
    """The verdict on a job's replicas as they stand, and one reputation event per
    replica it had (none for a result accepted unchecked). `adjudicate` decides whether
    the verdict is final."""
    events: list[Event] = [(node, assignment, "timed_out") for assignment, node in case.timed_out]
    late = [node for _, node in case.timed_out]
    common: dict[str, Any] = {
        "job_id": case.job_id,
        "owner": case.owner,
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
        verdict, kind = _judge_probe(case)
        answer = case.replicas[0]
        return verdict, [*events, (answer.node_id, answer.assignment_id, kind)]
    decision = decide(case.replicas, case.redundancy, COMPARATORS[case.task])
    assignment_of = {r.node_id: r.assignment_id for r in case.replicas}
    events += events_of(decision, assignment_of, checked=not unchecked(case))
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


def events_of(
    decision: Decision, assignment_of: Mapping[str, str], *, checked: bool
) -> list[Event]:
    """The events a decision earns the nodes that answered: `agreed` for the canonical
    cluster, `disagreed` for the others, none without a majority (nobody is known to
    be wrong) and none for a result accepted unchecked (`checked` False: nothing
    compared it). `assignment_of` maps each node to its replica's assignment. Missed
    deadlines earn `timed_out` apart, whatever the decision."""
    if not checked:
        return []
    return [(node, assignment_of[node], "agreed") for node in decision.agreeing] + [
        (node, assignment_of[node], "disagreed") for node in decision.disagreeing
    ]


def accepted_alone(redundancy: int, *, auto: bool) -> bool:
    """Whether a real job of this redundancy rests on one result nobody checks: an `auto`
    job that adaptive replication let run alone."""
    return auto and redundancy == 1


def unchecked(case: Case) -> bool:
    """Whether the case is one result accepted alone (adaptive replication): no other
    node checked it, so it earns its node no event until a re-validation does."""
    return accepted_alone(case.redundancy, auto=case.auto) and case.reference is None


def _judge_probe(case: Case) -> tuple[Verdict, str]:
    """A probe's verdict, and its node's event: does the answer match the reference?

    The verdict is the one the same answer would get as a real job run alone, whatever
    the comparison found, so that on the verdicts stream it reads like any other and
    tells nobody it was a probe, nor how it came out; the event alone (marked as a
    probe by the ledger's trigger) records that."""
    answer = case.replicas[0]
    compare = COMPARATORS[case.task]
    passed = answer.error is None and compare(
        case.reference, case.reference_precision, answer.output, answer.precision
    )
    verdict, _ = judge(replace(case, reference=None, auto=False, redundancy=1))
    return verdict, "agreed" if passed else "disagreed"


def score_late(task: str, canonical: Replica, late: Sequence[Replica]) -> list[Event]:
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
