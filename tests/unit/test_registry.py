"""The router's registry: heartbeats, ledger records and stats merged into node views."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from cortensor.adapters.ledger.router import NodeStats
from cortensor.protocol.placement import candidates
from cortensor.protocol.reputation import PRIOR_SCORE
from cortensor.schemas import NodeHeartbeat
from cortensor.services.router.registry import NodeRegistry

STARTED = datetime(2030, 1, 1, tzinfo=UTC)


def beat(node_id: str = "n1", **changes: Any) -> NodeHeartbeat:
    values: dict[str, Any] = {
        "node_id": node_id,
        "hw_class": "cpu-fp32",
        "precision": "fp32",
        "tasks": ["embed"],
        "models": ["all-MiniLM-L6-v2"],
        "capacity": 4,
        "inflight": 0,
        "processed": 0,
        "started_at": STARTED,
    }
    values.update(changes)
    return NodeHeartbeat(**values)


def offered(registry: NodeRegistry) -> set[str]:
    return {v.node_id for v in registry.views()}


def joined(registry: NodeRegistry, *beats: NodeHeartbeat, now: float = 100.0) -> NodeRegistry:
    for b in beats:
        if registry.observe(b, now):
            registry.recorded(b.node_id)
    return registry


def test_a_new_node_must_be_recorded_before_it_is_offered() -> None:
    registry = NodeRegistry()
    assert registry.observe(beat("n1"), 100.0) is True
    assert offered(registry) == set()
    registry.recorded("n1")
    assert offered(registry) == {"n1"}


def test_an_unchanged_heartbeat_needs_no_new_record() -> None:
    registry = joined(NodeRegistry(), beat("n1"))
    assert registry.observe(beat("n1", inflight=3, processed=50), 101.0) is False
    assert offered(registry) == {"n1"}


def test_last_seen_follows_the_latest_heartbeat() -> None:
    registry = joined(NodeRegistry(), beat("n1"), now=100.0)
    registry.observe(beat("n1"), 107.5)
    (view,) = registry.views()
    assert view.last_seen == 107.5


@pytest.mark.parametrize(
    "change",
    [
        {"hw_class": "cpu-int8", "precision": "int8"},
        {"models": ["all-MiniLM-L6-v2", "another-model"]},
        {"status": "draining"},
    ],
    ids=["class", "models", "status"],
)
def test_a_changed_class_models_or_status_must_be_recorded_again(change: dict[str, Any]) -> None:
    registry = joined(NodeRegistry(), beat("n1"))
    assert registry.observe(beat("n1", **change), 101.0) is True
    assert offered(registry) == set()
    registry.recorded("n1")
    assert offered(registry) == {"n1"}


def test_recorded_for_an_unknown_node_is_ignored() -> None:
    registry = NodeRegistry()
    registry.recorded("ghost")
    assert registry.views() == []
    assert registry.heartbeats() == []


def test_views_carry_the_heartbeat_and_default_stats() -> None:
    registry = joined(NodeRegistry(), beat("n1", hw_class="cpu-int8", precision="int8"))
    (view,) = registry.views()
    assert view.node_id == "n1"
    assert view.hw_class == "cpu-int8"
    assert view.models == frozenset({"all-MiniLM-L6-v2"})
    assert view.capacity == 4
    assert view.score == PRIOR_SCORE
    assert view.inflight == 0
    assert view.draining is False


def test_heartbeats_returns_the_last_beat_of_every_node() -> None:
    registry = NodeRegistry()
    registry.observe(beat("n1", processed=1), 1.0)
    registry.observe(beat("n1", processed=2), 2.0)
    registry.observe(beat("n2"), 2.0)
    by_id = {b.node_id: b for b in registry.heartbeats()}
    assert set(by_id) == {"n1", "n2"}
    assert by_id["n1"].processed == 2


def test_update_stats_sets_score_and_outstanding() -> None:
    registry = joined(NodeRegistry(), beat("n1"), beat("n2"))
    registry.update_stats({"n1": NodeStats(score=0.9, outstanding=2)})
    views = {v.node_id: v for v in registry.views()}
    assert (views["n1"].score, views["n1"].inflight) == (0.9, 2)
    assert (views["n2"].score, views["n2"].inflight) == (PRIOR_SCORE, 0)


def test_assigned_increments_inflight_until_the_next_refresh() -> None:
    registry = joined(NodeRegistry(), beat("n1"), beat("n2"))
    registry.update_stats({"n1": NodeStats(score=0.7, outstanding=1)})
    registry.assigned("n1")
    registry.assigned("n1")
    registry.assigned("n2")
    views = {v.node_id: v for v in registry.views()}
    assert views["n1"].inflight == 3
    assert views["n2"].inflight == 1
    # The ledger's fresh count now includes those assignments: local counts reset.
    registry.update_stats({"n1": NodeStats(score=0.7, outstanding=3)})
    views = {v.node_id: v for v in registry.views()}
    assert views["n1"].inflight == 3
    assert views["n2"].inflight == 0


def test_inflight_lowers_spare_capacity() -> None:
    registry = joined(NodeRegistry(), beat("n1", capacity=2))
    before = registry.views()[0].spare
    registry.assigned("n1")
    assert registry.views()[0].spare < before


def test_forget_removes_a_node_until_it_announces_itself_again() -> None:
    registry = joined(NodeRegistry(), beat("n1"), beat("n2"))
    registry.forget("n1")
    assert offered(registry) == {"n2"}
    assert {b.node_id for b in registry.heartbeats()} == {"n2"}
    registry.forget("never-seen")  # no error
    assert registry.observe(beat("n1"), 200.0) is True
    assert offered(registry) == {"n2"}


def test_draining_heartbeat_marks_the_view_draining_and_not_a_candidate() -> None:
    registry = joined(NodeRegistry(), beat("n1"), beat("n2"), now=100.0)
    registry.update_stats({n: NodeStats(0.9, 0, trust="active") for n in ("n1", "n2")})
    joined(registry, beat("n1", status="draining"), now=101.0)
    views = {v.node_id: v for v in registry.views()}
    assert views["n1"].draining is True
    assert views["n2"].draining is False
    pool = candidates(
        registry.views(), classes=("cpu-fp32",), model="all-MiniLM-L6-v2", now=101.0, ttl=5.0
    )
    assert [v.node_id for v in pool] == ["n2"]


def test_a_node_whose_record_failed_is_not_offered_on_its_next_heartbeat() -> None:
    # Router.on_heartbeat: observe() -> True, then ledger.upsert_nodes raises, so
    # recorded() is never called. The next, identical heartbeat must still ask for a
    # record, and the node must not be offered before the ledger holds it.
    registry = NodeRegistry()
    assert registry.observe(beat("n1"), 100.0) is True
    needs_record = registry.observe(beat("n1"), 101.0)
    assert (needs_record, offered(registry)) == (True, set())


def test_only_admitted_nodes_are_offered_real_jobs() -> None:
    registry = joined(NodeRegistry(), beat("n1"), beat("n2"), beat("n3"), now=100.0)
    registry.update_stats(
        {
            "n1": NodeStats(0.9, 0, trust="active", streaks={"all-MiniLM-L6-v2": 12}),
            "n2": NodeStats(0.5, 0, trust="probation"),
            "n3": NodeStats(0.1, 0, trust="quarantined"),
        }
    )
    pool = candidates(
        registry.views(), classes=("cpu-fp32",), model="all-MiniLM-L6-v2", now=100.0, ttl=5.0
    )
    assert [v.node_id for v in pool] == ["n1"]
    assert registry.streak("n1", "all-MiniLM-L6-v2") == 12
    assert registry.streak("n1", "whisper-base") == 0
    assert registry.streak("unknown", "all-MiniLM-L6-v2") == 0
    # A node the ledger has not scored yet is on probation.
    assert {v.node_id: v.trust for v in joined(NodeRegistry(), beat("n4"), now=1.0).views()} == {
        "n4": "probation"
    }


def test_views_kept_between_changes_equal_views_made_afresh() -> None:
    """The registry keeps its views between changes and updates a node's in place; after
    any sequence of heartbeats, records, assignments, refreshes and departures they
    equal, in order (the order the routing draws follow), the views made afresh."""
    rng = random.Random(3)
    registry = NodeRegistry(forget_after_s=30.0)
    ids = [f"n{i}" for i in range(12)]
    now = 100.0
    for _ in range(600):
        node = rng.choice(ids)
        step = rng.randrange(7)
        now += rng.uniform(0.0, 2.0)
        if step == 0:
            hw_class, precision = rng.choice((("cpu-fp32", "fp32"), ("cpu-int8", "int8")))
            status = rng.choice(("up", "up", "draining"))
            beat_ = beat(node, hw_class=hw_class, precision=precision, status=status)
            if registry.observe(beat_, now) and rng.random() < 0.7:
                registry.recorded(node)
        elif step == 1:
            registry.recorded(node)
        elif step == 2:
            registry.assigned(node)
        elif step == 3:
            registry.update_stats(
                {n: NodeStats(rng.random(), rng.randrange(4), trust="active") for n in ids}
            )
        elif step == 4:
            registry.forget(node)
        elif step == 5:
            registry.prune(now)
        kept = registry.views()
        registry._views = None
        assert kept == registry.views()
