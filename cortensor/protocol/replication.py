"""Adaptive replication: how many nodes run a job whose redundancy is `auto`. Pure logic.

BOINC's rule (trac wiki AdaptiveReplication), with a floor on spot-checks: a node with
fewer than MIN_STREAK consecutive valid results for a model is not trusted alone, and
every job it leads is checked; past that, its job runs alone with probability
1 - SOLO_RAMP/streak, but never more often than 1 - SPOT_CHECK, so that spot-checks
never stop. BOINC trusts from 10 valid results with 1 - 1/streak; we ask for 20 and check
the newly trusted more (MIN_STREAK and SOLO_RAMP say why). A node once quarantined for
wrong answers and readmitted is never trusted alone again.

A check costs one replica, not two: the leader and one checker (CHECK_REPLICAS), both of
which must agree; only when they disagree does the job escalate to 3, where a strict
majority decides. Two agreeing wrong answers need two colluding nodes, one of them
established (placement admits at most one newcomer among two), so only a leader that is
not established yet (fewer than ESTABLISHED_STREAK valid results: a network starting
up, when placement finds no established node to lead) gets REPLICAS from the start.
A wrong answer resets the streak to 0 and a missed deadline shortens it
(reputation.record), so a node caught once is replicated again until it earns back
MIN_STREAK valid results; and its unreplicated results since its last check are
re-validated (REVALIDATE_LIMIT of them at most).

Unreplicated results earn no reputation event when they are accepted: nothing checked
them. They earn one when a re-validation checks them.
"""

from __future__ import annotations

import random

from cortensor.schemas import MAX_REDUNDANCY

ESTABLISHED_STREAK = 10
"""Valid results in a row after which a node counts as established: it may lead a job,
and is no newcomer for placement's rule (BOINC trusts a host from 10)."""
MIN_STREAK = 20
"""Valid results in a row before a node may run jobs alone (BOINC: 10).

A node wrong on 10% of its jobs strings 10 valid results together with probability
0.9 ** 10 = 35%, 20 with 12%. Only checked results and probes count, so a fleet of
1,000 nodes at 100,000 jobs builds its streaks slowly: at 30, a fifth of the jobs after
warm-up were still led by nodes below it and the run spent 1.36 replicas per job;
docs/trust.md has the figures."""
SOLO_RAMP = 5.0
"""A trusted node's job is checked with probability SOLO_RAMP / streak until that falls
to SPOT_CHECK: a cheater that waits until it is trusted cheats first at a streak near
MIN_STREAK, where one cheat in four is checked."""
SPOT_CHECK = 0.15
"""The least share of a trusted node's jobs that is still checked.

A cheater that cheats on every job it runs alone is caught at each cheat with this
probability (or more, SOLO_RAMP), so it delivers at most (1 - SPOT_CHECK) / SPOT_CHECK
wrong results on average before its first failed check: 5.7 at 0.15 (9 at 0.1). With
one-replica checks, 0.15 costs 0.15 replicas per job."""
REPLICAS = 3
"""Replicas of a job led by a node not yet established, of a re-validation, and of a
split check: a strict majority needs 2 of 3."""
CHECK_REPLICAS = 2
"""Replicas of a trusted node's spot-check: the leader and one checker, both of which
must agree; a disagreement escalates to REPLICAS."""
MAX_REPLICAS = MAX_REDUNDANCY
"""Cap on replicas when the first ones find no strict majority: the most a job may ask for."""
ESCALATION = 2
"""Replicas added at a time past REPLICAS when there is no strict majority (an odd
count stays odd)."""
REVALIDATE_LIMIT = 50
"""Most unreplicated results of a node re-validated after it fails a check."""


def solo_probability(streak: int, offences: int = 0) -> float:
    """The probability that a job led by a node with this streak runs unreplicated; 0 for
    a node once quarantined for wrong answers (`offences`), whatever its streak."""
    if streak < MIN_STREAK or offences > 0:
        return 0.0
    return 1.0 - max(SOLO_RAMP / streak, SPOT_CHECK)


def replicas(streak: int, rng: random.Random, *, offences: int = 0) -> int:
    """How many nodes run an `auto` job led by a node with this streak: REPLICAS for a
    leader not yet established, CHECK_REPLICAS for one not trusted alone; for a trusted
    one, 1 or (a spot-check) CHECK_REPLICAS. `offences`: the leader's quarantines for
    wrong answers (reputation.Standing.offences)."""
    if streak < ESTABLISHED_STREAK:
        return REPLICAS
    return 1 if rng.random() < solo_probability(streak, offences) else CHECK_REPLICAS


def escalate(redundancy: int) -> int | None:
    """The redundancy to try next when `redundancy` replicas found no strict majority,
    or None at the cap (the job is then inconclusive). A lone result or a split
    spot-check goes to REPLICAS; past that, ESCALATION more at a time."""
    if redundancy >= MAX_REPLICAS:
        return None
    if redundancy < REPLICAS:
        return REPLICAS
    return min(redundancy + ESCALATION, MAX_REPLICAS)
