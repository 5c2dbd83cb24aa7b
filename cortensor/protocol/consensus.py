"""Deciding what is true from redundant replicas: clusters and the strict majority."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cortensor.protocol.comparators import Comparator


@dataclass(frozen=True, slots=True)
class Replica:
    """One node's answer to a job."""

    node_id: str
    result_id: str
    precision: str
    output: Any
    error: str | None = None
    assignment_id: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of comparing a job's replicas."""

    status: Literal["verified", "inconclusive"]
    reason: str
    canonical: Replica | None
    agreeing: tuple[str, ...]
    disagreeing: tuple[str, ...]


def largest_cluster(replicas: Sequence[Replica], compare: Comparator) -> list[Replica]:
    """The biggest group of replicas that all agree with one member of the group.

    Each valid replica is tried as a centre; its cluster is itself (first) plus every
    replica that agrees with it, so the canonical answer, the centre, agrees with every
    member. Ties go to the earliest centre: arrival order decides only between equally
    supported answers.
    """
    best: list[Replica] = []
    valid = [r for r in replicas if r.error is None]
    for centre in valid:
        cluster = [centre] + [
            r
            for r in valid
            if r is not centre and compare(centre.output, centre.precision, r.output, r.precision)
        ]
        if len(cluster) > len(best):
            best = cluster
    return best


def decide(replicas: Sequence[Replica], redundancy: int, compare: Comparator) -> Decision:
    """Take the strict-majority cluster of `redundancy` replicas as the canonical answer.

    A majority is counted against the replicas the job asked for, not those that
    arrived: two of three agreeing verify a job, one of three arriving does not.
    """
    cluster = largest_cluster(replicas, compare)
    members = {r.node_id for r in cluster}
    others = tuple(r.node_id for r in replicas if r.node_id not in members)
    needed = redundancy // 2 + 1
    if len(cluster) >= needed:
        return Decision(
            status="verified",
            reason=f"{len(cluster)} of {redundancy} replicas agree",
            canonical=cluster[0],
            agreeing=tuple(r.node_id for r in cluster),
            disagreeing=others,
        )
    return Decision(
        status="inconclusive",
        reason=(
            f"no strict majority: the largest agreeing group has {len(cluster)} of"
            f" {redundancy} replicas ({len(replicas)} arrived), {needed} needed"
        ),
        canonical=None,
        # Without a majority nobody is known to be wrong, so nobody is blamed.
        agreeing=(),
        disagreeing=(),
    )
