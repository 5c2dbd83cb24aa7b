"""Admission (cortensor.protocol.admission): the router takes jobs only while enough
nodes hold less than what they finish in half an assignment window."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from cortensor.protocol.admission import FLOOR, HEADROOM, has_room, holding, limit, speed
from cortensor.services.router.registry import NodeRegistry
from tests.unit.test_registry import beat


def test_a_node_of_unknown_speed_may_hold_the_floor() -> None:
    assert limit(0.0, 10.0) == FLOOR


def test_a_fast_node_may_hold_a_share_of_a_window_of_its_work() -> None:
    assert limit(100.0, 30.0) == int(100 * 30 * HEADROOM)


def test_the_speed_follows_the_heartbeats() -> None:
    rate = 0.0
    for _ in range(30):
        rate = speed(rate, 50, 1.0)
    assert 49.0 < rate <= 50.0
    assert speed(rate, 5, 0.0) == rate  # no time passed: no sample


def test_room_needs_enough_nodes_under_their_limit() -> None:
    assert has_room([(0, 64), (10, 64), (63, 64)], need=3)
    assert not has_room([(0, 64), (10, 64), (64, 64)], need=3)
    assert has_room([(0, 64), (10, 64), (64, 64), (1, 64)], need=3)
    assert has_room([(5, 64)], need=3)  # a smaller fleet: every node counts
    assert not has_room([(70, 64)], need=3)
    assert has_room([], need=3)  # no live node: jobs wait in the ledger as before


@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 10_000)), max_size=20),
    st.integers(1, 5),
)
def test_room_is_monotone_in_what_nodes_hold(nodes: list[tuple[int, int]], need: int) -> None:
    """Taking work off a node never closes the gate."""
    if has_room(nodes, need):
        lighter = [(max(held - 1, 0), most) for held, most in nodes]
        assert has_room(lighter, need)


def test_the_registry_measures_each_nodes_speed_from_its_processed_count() -> None:
    registry = NodeRegistry()
    started = datetime(2030, 1, 1, tzinfo=UTC)
    for second in range(20):
        registry.observe(beat("n1", processed=40 * second, started_at=started), float(second))
    assert 35.0 < registry.rates()["n1"] <= 40.0
    # A restarted node (a new started_at) starts again from nothing.
    registry.observe(beat("n1", processed=3, started_at=datetime(2030, 1, 2, tzinfo=UTC)), 20.0)
    assert registry.rates()["n1"] == 0.0
    assert holding({"n1": 10}, registry.rates(), 10.0) == [(10, FLOOR)]
