"""Adaptive replication: how many nodes run a job whose redundancy is `auto`. Pure logic.

BOINC's rule (trac wiki AdaptiveReplication), with a floor on spot-checks: a node with
fewer than MIN_STREAK consecutive valid results for a model is not trusted, and every
job it leads runs on REPLICAS nodes; past that, its job runs alone with probability
1 - 1/streak, but never more often than 1 - SPOT_CHECK, so that spot-checks never stop.
BOINC trusts from 10 valid results; we ask for 30 (MIN_STREAK says why).
Every failure resets the streak to 0 (reputation.record), so a node caught once is
replicated again until it earns back MIN_STREAK valid results; and its unreplicated
results since its last check are re-validated (REVALIDATE_LIMIT of them at most).

Unreplicated results earn no reputation event when they are accepted: nothing checked
them. They earn one when a re-validation checks them.
"""

from __future__ import annotations

import random

from cortensor.schemas import MAX_REDUNDANCY

MIN_STREAK = 30
"""Consecutive valid results before a node may run jobs alone (BOINC: 10).

A node wrong on 10% of its jobs strings 10 valid results together with probability
0.9 ** 10 = 35%, and then delivers about one wrong result per 10 unchecked ones until a
spot-check catches it; 30 in a row happen with probability 0.9 ** 30 = 4%, and take it
some 230 checked results on average, far more than the ~50 after which the suspicion
test (cortensor.protocol.reputation) quarantines it. `cortensor simulate` (1,000 nodes, 20%
faulty, 100,000 jobs): with 10, 0.27-0.31% of results delivered were wrong (3 seeds);
with 30, 0.03-0.07% (32 seeds), for 1.28 instead of 1.23 replicas per job once the
fleet's streaks are built. An honest node pays it once, and again after each failure."""
SPOT_CHECK = 0.1
"""The least share of a trusted node's jobs that is still replicated."""
REPLICAS = 3
"""Replicas of a job that is checked: a strict majority needs 2 of 3."""
MAX_REPLICAS = MAX_REDUNDANCY
"""Cap on replicas when the first ones find no strict majority: the most a job may ask for."""
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
