"""Adaptive replication: how many nodes run a job whose redundancy is `auto`. Pure logic.

BOINC's rule (trac wiki AdaptiveReplication), with a floor on spot-checks: a node with
fewer than MIN_STREAK consecutive valid results for a model is not trusted, and every
job it leads runs on REPLICAS nodes; past that, its job runs alone with probability
1 - 1/streak, but never more often than 1 - SPOT_CHECK, so that spot-checks never stop.
Every failure resets the streak to 0 (reputation.record), so a node caught once is
replicated again until it earns back MIN_STREAK valid results; and its unreplicated
results since its last check are re-validated (REVALIDATE_LIMIT of them at most).

Unreplicated results earn no reputation event when they are accepted: nothing checked
them. They earn one when a re-validation checks them.
"""

from __future__ import annotations

import random

MIN_STREAK = 10
"""Consecutive valid results before a node may run jobs alone (BOINC: 10)."""
SPOT_CHECK = 0.1
"""The least share of a trusted node's jobs that is still replicated."""
REPLICAS = 3
"""Replicas of a job that is checked: a strict majority needs 2 of 3."""
MAX_REPLICAS = 7
"""Cap on replicas when the first ones find no strict majority."""
ESCALATION = 2
"""Replicas added at a time when there is no strict majority (an odd count stays odd)."""
REVALIDATE_LIMIT = 50
"""Most unreplicated results of a node re-validated after it fails a check."""


def solo_probability(streak: int) -> float:
    """The probability that a job led by a node with this streak runs unreplicated."""
    if streak < MIN_STREAK:
        return 0.0
    return 1.0 - max(1.0 / streak, SPOT_CHECK)


def replicas(streak: int, rng: random.Random) -> int:
    """How many nodes run an `auto` job led by a node with this streak."""
    return 1 if rng.random() < solo_probability(streak) else REPLICAS


def escalate(redundancy: int) -> int | None:
    """The redundancy to try next when `redundancy` replicas found no strict majority,
    or None at the cap (the job is then inconclusive)."""
    if redundancy >= MAX_REPLICAS:
        return None
    return min(max(redundancy, REPLICAS - ESCALATION) + ESCALATION, MAX_REPLICAS)
