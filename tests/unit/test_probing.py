"""When each node gets a known-answer probe: the schedule and its policy."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortensor.protocol.placement import NodeView
from cortensor.protocol.probing import ProbePolicy, ProbeSchedule

POLICY = ProbePolicy(
    probation_mean_s=1.0,
    quarantine_mean_s=4.0,
    quarantine_backoff=2.0,
    quarantine_max_s=30.0,
    active_mean_s=50.0,
)
TRUSTS = ("probation", "quarantined", "active")


def view(node_id: str, trust: str, now: float) -> NodeView:
    return NodeView(node_id, "cpu-int8", frozenset({"m"}), last_seen=now, trust=trust)


@pytest.mark.parametrize(
    "bad",
    [
        {"probation_mean_s": 0.0},
        {"active_mean_s": -1.0},
        {"quarantine_backoff": 0.5},
        {"quarantine_mean_s": 10.0, "quarantine_max_s": 5.0},
    ],
)
def test_a_policy_that_makes_no_sense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="ProbePolicy"):
        ProbePolicy(**bad)


def test_quarantine_gaps_back_off_with_failures_up_to_the_cap() -> None:
    assert [POLICY.mean_gap("quarantined", f) for f in range(5)] == [4.0, 8.0, 16.0, 30.0, 30.0]
    assert POLICY.mean_gap("quarantined", 10**9) == 30.0  # no overflow however many
    assert POLICY.mean_gap("probation", 7) == 1.0
    with pytest.raises(ValueError, match="unknown trust"):
        POLICY.mean_gap("retired")


# One event: (node index, trust, what happens, time step).
EVENTS = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from(TRUSTS),
        st.sampled_from(("poll", "pass", "fail")),
        st.floats(0.0, 20.0, allow_nan=False),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(events=EVENTS, seed=st.integers(0, 2**32))
def test_any_event_sequence_keeps_gaps_positive_and_the_back_off_capped(
    events: list[tuple[int, str, str, float]], seed: int
) -> None:
    schedule = ProbeSchedule(POLICY, random.Random(seed))
    now = 0.0
    failures: dict[str, int] = {}
    trusts: dict[str, str] = {}
    for index, trust, what, step in events:
        now += step
        node_id = f"n{index}"
        if what == "poll":
            if trusts.get(node_id, trust) != trust and trust != "quarantined":
                failures[node_id] = 0
            trusts[node_id] = trust
            if schedule.due(view(node_id, trust, now), now):
                schedule.sent(node_id, now)
            next_at = schedule.next_at(node_id)
            assert next_at is not None
            assert next_at > now  # a gap is positive: never due twice at one instant
        elif node_id in trusts:
            failures[node_id] = 0 if what == "pass" else failures.get(node_id, 0) + 1
            schedule.outcome(node_id, what == "pass")
        assert schedule.failures(node_id) == failures.get(node_id, 0)
        mean = POLICY.mean_gap(trust, schedule.failures(node_id))
        assert 0 < mean <= max(POLICY.quarantine_max_s, POLICY.active_mean_s)
        if trust == "quarantined":
            assert mean <= POLICY.quarantine_max_s
        assert schedule.gap(trust, schedule.failures(node_id)) > 0


def probes_sent(schedule: ProbeSchedule, trust: str, horizon: float, tick: float) -> int:
    sent, now = 0, 0.0
    while now < horizon:
        if schedule.due(view("n1", trust, now), now):
            schedule.sent("n1", now)
            sent += 1
        now += tick
    return sent


@pytest.mark.parametrize(("trust", "mean"), [("active", 50.0), ("probation", 1.0)])
def test_nodes_are_probed_at_the_configured_rate_in_the_long_run(trust: str, mean: float) -> None:
    horizon = 5_000 * mean
    sent = probes_sent(ProbeSchedule(POLICY, random.Random(7)), trust, horizon, tick=mean / 50)
    # ~5,000 expected (a gap is the drawn one plus half a tick on average); a Poisson
    # count's standard deviation is ~71.
    assert abs(sent - horizon / (mean * 1.01)) < 300


def test_a_node_that_keeps_failing_is_probed_at_the_capped_rate() -> None:
    schedule = ProbeSchedule(POLICY, random.Random(3))
    assert schedule.due(view("n1", "quarantined", 0.0), 0.0) in (True, False)
    for _ in range(10):
        schedule.outcome("n1", passed=False)
    gaps = [schedule.gap("quarantined", schedule.failures("n1")) for _ in range(20_000)]
    assert abs(sum(gaps) / len(gaps) - POLICY.quarantine_max_s) < 1.0
    schedule.outcome("n1", passed=True)
    assert schedule.failures("n1") == 0


def test_active_nodes_are_not_probed_when_the_policy_says_never() -> None:
    never = ProbeSchedule(ProbePolicy(active_mean_s=math.inf), random.Random(1))
    assert probes_sent(never, "active", 10_000.0, tick=1.0) == 0


def test_gaps_are_random_so_that_timing_reveals_nothing() -> None:
    schedule = ProbeSchedule(POLICY, random.Random(5))
    gaps = [schedule.gap("probation") for _ in range(2_000)]
    assert len(set(gaps)) == len(gaps)
    mean = sum(gaps) / len(gaps)
    # An exponential distribution's standard deviation equals its mean.
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert abs(mean - 1.0) < 0.1
    assert abs(sd - 1.0) < 0.15


def test_a_change_of_trust_redraws_the_next_probe_and_a_silent_node_is_skipped() -> None:
    schedule = ProbeSchedule(POLICY, random.Random(2), node_ttl_s=5.0)
    schedule.due(view("n1", "active", 0.0), 0.0)
    first = schedule.next_at("n1")
    schedule.due(view("n1", "quarantined", 1.0), 1.0)
    assert schedule.next_at("n1") != first
    silent = NodeView("n1", "cpu-int8", frozenset({"m"}), last_seen=0.0, trust="quarantined")
    assert schedule.due(silent, 10_000.0) is False
    with pytest.raises(KeyError):
        schedule.sent("never-seen", 0.0)


def test_nodes_that_left_are_forgotten() -> None:
    schedule = ProbeSchedule(POLICY, random.Random(1))
    for name in ("n1", "n2", "n3"):
        schedule.due(view(name, "probation", 0.0), 0.0)
    schedule.outcome("n2", passed=False)
    schedule.keep_only(["n2"])
    assert [schedule.next_at(n) is None for n in ("n1", "n2", "n3")] == [True, False, True]
    assert schedule.failures("n2") == 1
    schedule.forget("n2")
    assert schedule.next_at("n2") is None
