"""A node's standing: decayed score, streak, suspicion and trust, folded from its events."""

from __future__ import annotations

import math
import random
import re
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.protocol import reputation
from cortensor.protocol.adjudication import Case, judge, unchecked
from cortensor.protocol.consensus import Replica
from cortensor.protocol.replication import (
    CHECK_REPLICAS,
    ESTABLISHED_STREAK,
    MAX_REPLICAS,
    MIN_STREAK,
    REPLICAS,
    SOLO_RAMP,
    SPOT_CHECK,
    escalate,
    replicas,
    solo_probability,
)
from cortensor.protocol.reputation import (
    ADMIT_PROBES,
    HALF_LIFE_S,
    LATE_STREAK_COST,
    LATENESS_LIMIT,
    MAX_OFFENCES,
    PROBATION_LATENESS_LIMIT,
    READMIT_PROBES,
    STEP_LATE,
    SUSPICION_LIMIT,
    Standing,
    fold,
    record,
)

MIGRATION = Path("db/migrations/versions/0005_tolerant_lateness.py")
"""The migration that last replaced the fold's SQL function."""
kinds = st.sampled_from(["agreed", "disagreed", "timed_out"])


def admitted() -> Standing:
    return fold([("agreed", 0.0, True)] * ADMIT_PROBES)


def test_a_new_node_is_on_probation_at_the_prior() -> None:
    assert Standing().trust == "probation"
    assert Standing().score == reputation.PRIOR_SCORE


def test_probes_passed_in_a_row_admit_a_node_and_a_failed_one_quarantines_it() -> None:
    assert fold([("agreed", 0.0, True)] * (ADMIT_PROBES - 1)).trust == "probation"
    assert admitted().trust == "active"
    assert fold([("agreed", 0.0, True), ("disagreed", 1.0, True)]).trust == "quarantined"
    # A real job's result does not admit a node: only probes do.
    assert fold([("agreed", 0.0, False)] * 20).trust == "probation"


def test_an_always_wrong_node_is_quarantined_on_its_third_failure() -> None:
    standing = admitted()
    for n in range(1, 4):
        standing = record(standing, "disagreed", float(n))
        assert standing.trust == ("quarantined" if n == 3 else "active")


def test_a_node_wrong_one_time_in_ten_is_quarantined_within_a_hundred_results() -> None:
    rng = random.Random(3)
    for _ in range(20):
        standing, jobs = admitted(), 0
        while standing.trust == "active" and jobs < 1000:
            jobs += 1
            standing = record(standing, "disagreed" if rng.random() < 0.1 else "agreed", jobs)
        assert standing.trust == "quarantined"
        assert jobs <= 200


def test_an_honest_node_with_rare_failures_stays_active() -> None:
    rng = random.Random(5)
    standing = admitted()
    for n in range(5000):
        standing = record(standing, "disagreed" if rng.random() < 0.002 else "agreed", n)
    assert standing.trust == "active"
    assert standing.suspicion < SUSPICION_LIMIT


def test_missed_deadlines_never_raise_suspicion_and_cost_the_streak_a_little() -> None:
    standing = fold([("agreed", float(n), False) for n in range(30)], admitted())
    late = record(standing, "timed_out", 31.0)
    assert late.suspicion == standing.suspicion
    assert late.streak == standing.streak - LATE_STREAK_COST
    assert late.score < standing.score
    assert record(late, "disagreed", 32.0).streak == 0


def test_an_overloaded_honest_node_is_never_quarantined_by_its_misses() -> None:
    rng = random.Random(8)
    standing = admitted()
    for n in range(20_000):
        # Overloaded a tenth of the time, missing every deadline for up to 30 in a row.
        overloaded = n % 300 < rng.randrange(31)
        miss = overloaded or rng.random() < 0.02
        standing = record(standing, "timed_out" if miss else "agreed", float(n))
        assert standing.trust == "active"


def test_a_node_that_never_answers_is_quarantined_but_not_as_an_offender() -> None:
    standing, misses = admitted(), 0
    while standing.trust == "active":
        misses += 1
        standing = record(standing, "timed_out", float(misses))
    assert misses == math.ceil(LATENESS_LIMIT / STEP_LATE)
    assert (standing.trust, standing.offences, standing.barred) == ("quarantined", 0, False)
    # On probation, with no record to weigh, it takes 5 missed probes.
    fresh, probes = Standing(), 0
    while fresh.trust == "probation":
        probes += 1
        fresh = record(fresh, "timed_out", float(probes), probe=True)
    assert probes == math.ceil(PROBATION_LATENESS_LIMIT / STEP_LATE) == 5
    assert fresh.offences == 0
    readmitted = fold([("agreed", 9.0, True)] * READMIT_PROBES, fresh)
    assert (readmitted.trust, readmitted.lateness) == ("active", 0.0)


def test_a_missed_probe_on_probation_does_not_quarantine_a_wrong_one_does() -> None:
    late = fold([("agreed", 0.0, True), ("timed_out", 1.0, True)])
    assert (late.trust, late.probe_streak) == ("probation", 0)
    wrong = record(late, "disagreed", 2.0, probe=True)
    assert (wrong.trust, wrong.offences) == ("quarantined", 1)


def test_a_repeat_offender_is_never_readmitted() -> None:
    standing = admitted()
    for offence in range(1, MAX_OFFENCES + 1):
        standing = fold([("disagreed", float(n), False) for n in range(3)], standing)
        assert (standing.trust, standing.offences) == ("quarantined", offence)
        standing = fold([("agreed", 5.0, True)] * READMIT_PROBES, standing)
    assert standing.barred
    assert fold([("agreed", 9.0, True)] * 100, standing).trust == "quarantined"


def test_a_quarantined_node_earns_its_way_back_with_probes_only() -> None:
    standing = fold([("disagreed", float(n), False) for n in range(3)], admitted())
    assert standing.trust == "quarantined"
    standing = fold([("agreed", 10.0, False)] * 50, standing)
    assert standing.trust == "quarantined"
    standing = fold([("agreed", 20.0, True)] * READMIT_PROBES, standing)
    assert (standing.trust, standing.suspicion, standing.streak) == ("active", 0.0, 0)


def test_old_events_weigh_less() -> None:
    old = fold([("disagreed", 0.0, False)] * 4)
    assert old.disagreed == 4
    later = record(old, "agreed", HALF_LIFE_S)
    assert later.disagreed == pytest.approx(2.0)
    assert later.agreed == 1.0
    # The same events close together would weigh the failures fully.
    assert later.score > record(old, "agreed", 0.0).score


@given(st.lists(st.tuples(kinds, st.floats(0, 1e7), st.booleans()), max_size=60))
def test_the_fold_keeps_its_invariants(events: list[tuple[str, float, bool]]) -> None:
    standing = fold(sorted(events, key=lambda e: e[1]))  # type: ignore[arg-type]
    assert standing.observations == len(events)
    assert 0.0 < standing.score < 1.0
    assert standing.suspicion >= 0.0
    assert standing.lateness >= 0.0
    assert standing.agreed + standing.disagreed + standing.timed_out <= len(events) + 1e-9
    # The streak counts agreed events since the last wrong answer, less what deadlines
    # missed since then took off.
    since = 0
    for kind, _, _ in reversed(sorted(events, key=lambda e: e[1])):
        if kind == "disagreed":
            break
        since += kind == "agreed"
    assert standing.streak <= since
    assert 0 <= standing.offences <= MAX_OFFENCES


def test_the_migration_writes_out_the_same_constants() -> None:
    text = MIGRATION.read_text()
    values = dict(re.findall(r"^([A-Z_]+) = (.+)$", text, flags=re.MULTILINE))
    assert eval(values["HALF_LIFE_S"]) == reputation.HALF_LIFE_S
    for name in (
        "STEP_VALID",
        "STEP_FAILED",
        "SUSPICION_LIMIT",
        "STEP_LATE",
        "STEP_ON_TIME",
        "LATENESS_LIMIT",
        "PROBATION_LATENESS_LIMIT",
    ):
        assert math.isclose(eval(values[name], {"math": math}), getattr(reputation, name)), name
    for name in ("LATE_STREAK_COST", "ADMIT_PROBES", "READMIT_PROBES", "MAX_OFFENCES"):
        assert int(values[name]) == getattr(reputation, name), name


# -- adaptive replication ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("streak", "solo"),
    [
        (0, 0.0),
        (MIN_STREAK - 1, 0.0),
        (MIN_STREAK, 1 - max(SOLO_RAMP / MIN_STREAK, SPOT_CHECK)),
        (1000, 1 - SPOT_CHECK),
    ],
)
def test_solo_probability_follows_the_streak_with_a_spot_check_floor(
    streak: int, solo: float
) -> None:
    assert solo_probability(streak) == pytest.approx(solo)


@given(st.integers(0, 10_000))
def test_spot_checks_never_stop(streak: int) -> None:
    assert 0.0 <= solo_probability(streak) <= 1 - SPOT_CHECK


@given(st.integers(0, 10_000), st.integers(1, 5))
def test_an_offender_is_never_trusted_alone(streak: int, offences: int) -> None:
    assert solo_probability(streak, offences) == 0.0
    assert replicas(streak, random.Random(streak), offences=offences) > 1


def test_replicas_are_one_a_one_replica_check_or_a_majority() -> None:
    rng = random.Random(1)
    drawn = [replicas(1000, rng) for _ in range(5000)]
    assert set(drawn) == {1, CHECK_REPLICAS}
    assert drawn.count(CHECK_REPLICAS) / len(drawn) == pytest.approx(SPOT_CHECK, abs=0.02)
    # Established but not trusted alone: checked by one more node.
    assert {replicas(MIN_STREAK - 1, rng) for _ in range(100)} == {CHECK_REPLICAS}
    # Not established (a network starting up): a strict majority from the start.
    assert {replicas(ESTABLISHED_STREAK - 1, rng) for _ in range(100)} == {REPLICAS}


def test_a_split_vote_escalates_to_the_cap() -> None:
    assert [escalate(k) for k in (1, 2, 3, 5, 7)] == [3, 3, 5, 7, None]
    assert escalate(MAX_REPLICAS) is None


# -- the judge on probes and unreplicated results ---------------------------------------


def _replica(node: str, output: list[list[float]]) -> Replica:
    return Replica(
        node_id=node,
        result_id=str(uuid.uuid4()),
        precision="int8",
        output=output,
        assignment_id=f"a-{node}",
    )


def test_a_lone_result_is_accepted_unchecked_and_earns_no_event() -> None:
    case = Case(
        job_id=uuid.uuid4(), task="embed", model="m", redundancy=1,
        replicas=[_replica("n1", [[1.0, 0.0]])], auto=True,
    )  # fmt: skip
    verdict, events = judge(case)
    assert unchecked(case)
    assert verdict.status == "verified"
    assert events == []


def test_a_probe_is_judged_against_its_reference() -> None:
    base = {"job_id": uuid.uuid4(), "task": "embed", "model": "m", "redundancy": 1}
    right = Case(**base, replicas=[_replica("n1", [[1.0, 0.0]])], reference=[[1.0, 0.0]])
    wrong = Case(**base, replicas=[_replica("n2", [[0.0, 1.0]])], reference=[[1.0, 0.0]])
    assert judge(right)[1] == [("n1", "a-n1", "agreed")]
    assert judge(right)[0].status == "verified"
    assert judge(wrong)[1] == [("n2", "a-n2", "disagreed")]
    # Its verdict is the one a real job run alone would get, right or wrong, so that
    # nothing published marks a probe: only the event says how it came out.
    as_real = judge(Case(**base, replicas=wrong.replicas))[0]
    assert judge(wrong)[0].model_dump(exclude={"created_at"}) == as_real.model_dump(
        exclude={"created_at"}
    )
    assert "probe" not in judge(wrong)[0].reason
    assert not unchecked(right)
