"""Routing policy: which live, eligible nodes get the replicas of a job."""

from __future__ import annotations

import math
import random
from collections import Counter
from itertools import permutations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cortensor.errors import NoEligibleNodes, RetryableError
from cortensor.protocol.placement import (
    NEWCOMER_WEIGHT,
    NodeView,
    Ranking,
    Sampler,
    candidates,
    choose,
    established,
    newcomer_room,
    weight,
    weights,
)
from cortensor.protocol.replication import ESTABLISHED_STREAK

MODEL = "all-MiniLM-L6-v2"
NOW = 1000.0
TTL = 10.0


def node(
    node_id: str,
    *,
    hw_class: str = "cpu-fp32",
    models: frozenset[str] = frozenset({MODEL}),
    last_seen: float = NOW,
    score: float = 0.5,
    capacity: int = 1,
    inflight: int = 0,
    draining: bool = False,
) -> NodeView:
    return NodeView(
        node_id=node_id,
        hw_class=hw_class,
        models=models,
        last_seen=last_seen,
        score=score,
        capacity=capacity,
        inflight=inflight,
        draining=draining,
    )


def eligible_ids(nodes: list[NodeView], **overrides: object) -> set[str]:
    options: dict[str, object] = {
        "classes": ("cpu-fp32", "cpu-int8"),
        "model": MODEL,
        "now": NOW,
        "ttl": TTL,
    }
    options.update(overrides)
    return {n.node_id for n in candidates(nodes, **options)}  # type: ignore[arg-type]


# -- candidates ------------------------------------------------------------------------


def test_candidates_keep_a_live_node_of_an_eligible_class_serving_the_model() -> None:
    assert eligible_ids([node("a"), node("b", hw_class="cpu-int8")]) == {"a", "b"}


def test_candidates_filter_by_class() -> None:
    nodes = [node("cpu", hw_class="cpu-fp32"), node("gpu", hw_class="cuda-fp16")]
    assert eligible_ids(nodes, classes=("cuda-fp16",)) == {"gpu"}
    assert eligible_ids(nodes, classes=("cpu-fp32",)) == {"cpu"}
    assert eligible_ids(nodes, classes=()) == set()


def test_candidates_filter_by_model() -> None:
    nodes = [node("has"), node("lacks", models=frozenset({"other-model"}))]
    assert eligible_ids(nodes) == {"has"}
    assert eligible_ids(nodes, model="other-model") == {"lacks"}


def test_candidates_skip_nodes_whose_heartbeat_is_older_than_the_ttl() -> None:
    nodes = [
        node("fresh", last_seen=NOW),
        node("edge", last_seen=NOW - TTL),
        node("dead", last_seen=NOW - TTL - 0.001),
        node("long-dead", last_seen=0.0),
    ]
    assert eligible_ids(nodes) == {"fresh", "edge"}


def test_candidates_skip_draining_nodes() -> None:
    nodes = [node("up"), node("leaving", draining=True)]
    assert eligible_ids(nodes) == {"up"}


def test_candidates_honour_exclude() -> None:
    nodes = [node("a"), node("b"), node("c")]
    assert eligible_ids(nodes, exclude={"a", "c"}) == {"b"}
    assert eligible_ids(nodes, exclude=["a", "b", "c"]) == set()


def test_live_is_false_for_draining_even_when_fresh() -> None:
    assert node("x").live(NOW, TTL)
    assert not node("x", draining=True).live(NOW, TTL)
    assert not node("x", last_seen=NOW - 60).live(NOW, TTL)


def test_spare_capacity_has_a_floor_so_busy_nodes_stay_eligible() -> None:
    assert node("idle", capacity=4).spare == pytest.approx(1.25)
    assert node("half", capacity=4, inflight=2).spare == pytest.approx(0.75)
    assert node("full", capacity=4, inflight=4).spare == pytest.approx(0.25)
    assert node("over", capacity=4, inflight=9).spare == pytest.approx(0.25)


# -- choose ----------------------------------------------------------------------------


def test_choose_picks_k_distinct_nodes() -> None:
    pool = [node(f"n{i}") for i in range(6)]
    chosen = choose(pool, 3, rng=random.Random(1))
    ids = [n.node_id for n in chosen]
    assert len(ids) == 3
    assert len(set(ids)) == 3
    assert set(ids) <= {n.node_id for n in pool}


def test_choose_takes_the_whole_pool_when_k_equals_its_size() -> None:
    pool = [node(f"n{i}") for i in range(4)]
    assert {n.node_id for n in choose(pool, 4, rng=random.Random(0))} == {"n0", "n1", "n2", "n3"}


def test_choose_raises_no_eligible_nodes_when_pool_is_smaller_than_k() -> None:
    pool = [node("a"), node("b")]
    with pytest.raises(NoEligibleNodes, match="needs 3 distinct live nodes, 2 eligible"):
        choose(pool, 3, rng=random.Random(0))
    with pytest.raises(NoEligibleNodes):
        choose([], 1, rng=random.Random(0))


def test_no_eligible_nodes_is_retryable() -> None:
    # More nodes may join before the deadline, so the router must wait, not fail.
    assert issubclass(NoEligibleNodes, RetryableError)


@pytest.mark.parametrize("k", [0, -1])
def test_choose_rejects_k_below_one(k: int) -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        choose([node("a")], k, rng=random.Random(0))


def test_temperature_zero_is_greedy_by_score_squared_times_spare() -> None:
    pool = [
        node("good-busy", score=0.9, capacity=2, inflight=2),  # 0.81 * 0.25 = 0.2025
        node("good-idle", score=0.9, capacity=2),  # 0.81 * 1.25 = 1.0125
        node("mid-idle", score=0.6, capacity=2),  # 0.36 * 1.25 = 0.45
        node("mid-half", score=0.8, capacity=2, inflight=1),  # 0.64 * 0.75 = 0.48
        node("bad-idle", score=0.1, capacity=2),  # 0.01 * 1.25 = 0.0125
    ]
    for seed in range(5):
        chosen = choose(pool, 3, rng=random.Random(seed), temperature=0)
        assert [n.node_id for n in chosen] == ["good-idle", "mid-half", "mid-idle"]


def test_a_busy_honest_node_is_preferred_to_an_idle_cheat() -> None:
    honest_full = node("honest", score=0.9, capacity=4, inflight=8)
    cheat_idle = node("cheat", score=0.1, capacity=4)
    assert weight(honest_full, 0.5) > 20 * weight(cheat_idle, 0.5)


def test_temperature_zero_breaks_ties_by_node_id() -> None:
    pool = [node("c"), node("a"), node("b")]
    chosen = choose(pool, 2, rng=random.Random(0), temperature=0)
    assert [n.node_id for n in chosen] == ["a", "b"]


def test_weight_prefers_higher_score_and_more_spare_capacity() -> None:
    assert weight(node("hi", score=0.9), 0.5) > weight(node("lo", score=0.1), 0.5)
    assert weight(node("idle", capacity=2), 0.5) > weight(node("busy", capacity=2, inflight=2), 0.5)
    # A zero score is floored, never zero, so a node can earn its way back.
    assert weight(node("zero", score=0.0), 0.5) > 0


def test_higher_temperature_flattens_the_preference() -> None:
    hi, lo = node("hi", score=0.9), node("lo", score=0.1)
    cold = weight(hi, 0.25) / weight(lo, 0.25)
    warm = weight(hi, 4.0) / weight(lo, 4.0)
    assert cold > warm > 1.0


def test_weighted_draw_prefers_the_good_node_but_still_picks_the_bad_one() -> None:
    pool = [node("good", score=0.9), node("bad", score=0.1), node("mid", score=0.5)]
    rng = random.Random(20240501)
    draws = 2000
    firsts = Counter(choose(pool, 1, rng=rng)[0].node_id for _ in range(draws))
    assert firsts["good"] > firsts["mid"] > firsts["bad"]
    # With weights score^2 (temperature 1) the bad node wins about 1% of single draws;
    # it must win some: otherwise a node could know it is never checked alone.
    assert firsts["bad"] > 0
    assert firsts["good"] > draws / 2


def test_seeded_rng_makes_the_draw_reproducible() -> None:
    pool = [node(f"n{i}", score=0.1 + 0.08 * i) for i in range(10)]
    first = [n.node_id for n in choose(pool, 4, rng=random.Random(7))]
    again = [n.node_id for n in choose(pool, 4, rng=random.Random(7))]
    assert first == again


_POOL = st.lists(
    st.builds(
        node,
        st.text("abcdefghij0123456789-", min_size=1, max_size=8),
        score=st.floats(0.0, 1.0),
        capacity=st.integers(1, 8),
        inflight=st.integers(0, 12),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda n: n.node_id,
)


@given(
    pool=_POOL,
    data=st.data(),
    seed=st.integers(0, 2**32),
    temperature=st.sampled_from([0.0, 0.1, 0.5, 1.0, 5.0]),
)
def test_choose_returns_k_distinct_nodes_from_the_pool(
    pool: list[NodeView], data: st.DataObject, seed: int, temperature: float
) -> None:
    k = data.draw(st.integers(1, len(pool)), label="k")
    chosen = choose(pool, k, rng=random.Random(seed), temperature=temperature)
    ids = [n.node_id for n in chosen]
    assert len(ids) == k
    assert len(set(ids)) == k
    assert set(ids) <= {n.node_id for n in pool}


@given(pool=_POOL, extra=st.integers(1, 3))
def test_choose_raises_for_any_k_above_the_pool_size(pool: list[NodeView], extra: int) -> None:
    with pytest.raises(NoEligibleNodes):
        choose(pool, len(pool) + extra, rng=random.Random(0))


def test_low_positive_temperature_still_chooses_a_busy_low_score_node() -> None:
    # merit = max(score, 1e-6) ** 2 * spare, tiny; merit ** (1 / 0.02) == 0.0, and
    # choose() divides log(u) by it. Any temperature > 0 should still yield k nodes.
    pool = [node("busy", score=0.0, inflight=1), node("idle", score=0.5)]
    chosen = choose(pool, 2, rng=random.Random(0), temperature=0.02)
    assert {n.node_id for n in chosen} == {"busy", "idle"}


# -- newcomers and the vectorized sampler ----------------------------------------------


class _Uniforms(random.Random):
    """A random source that returns given uniforms, in order."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self._values = iter(values)

    def random(self) -> float:
        return next(self._values)


def _fleet(scores: list[float], streaks: list[int]) -> list[NodeView]:
    return [
        NodeView(f"n{i:03d}", "cpu-fp32", frozenset({MODEL}), NOW, score=s, streaks={MODEL: k})
        for i, (s, k) in enumerate(zip(scores, streaks, strict=True))
    ]


def test_a_node_is_established_from_its_streak_for_the_model() -> None:
    fresh, settled = _fleet([0.9, 0.9], [ESTABLISHED_STREAK - 1, ESTABLISHED_STREAK])
    assert not established(fresh, MODEL)
    assert established(settled, MODEL)
    assert not established(settled, "another-model")


@pytest.mark.parametrize(
    ("redundancy", "already", "room"),
    [(1, 0, 0), (2, 0, 1), (2, 1, 0), (3, 0, 1), (3, 1, 0), (5, 1, 1), (7, 0, 3), (7, 4, 0)],
)
def test_newcomers_stay_below_a_strict_majority(redundancy: int, already: int, room: int) -> None:
    assert newcomer_room(redundancy, already) == room
    assert room == 0 or already + room < redundancy // 2 + 1


def test_a_newcomer_weighs_a_tenth_of_an_established_node() -> None:
    fresh, settled = _fleet([0.8, 0.8], [0, ESTABLISHED_STREAK])
    assert weight(fresh, 1.0) == weight(settled, 1.0)
    assert weight(fresh, 1.0, MODEL) == pytest.approx(NEWCOMER_WEIGHT * weight(settled, 1.0))


def test_newcomers_never_make_a_majority_while_established_nodes_are_left() -> None:
    rng = random.Random(3)
    # Newcomers with far better scores: they would win every draw but for the rule.
    pool = _fleet([0.99] * 6 + [0.3] * 3, [0] * 6 + [ESTABLISHED_STREAK] * 3)
    for _ in range(200):
        leader = choose(pool, 1, rng=rng, model=MODEL, newcomers=0)
        assert established(leader[0], MODEL)
        three = choose(pool, 3, rng=rng, model=MODEL, newcomers=newcomer_room(3))
        assert sum(not established(n, MODEL) for n in three) <= 1


def test_newcomers_fill_the_places_no_established_node_is_left_for() -> None:
    pool = _fleet([0.9] * 4 + [0.5], [0] * 4 + [ESTABLISHED_STREAK])
    chosen = choose(pool, 3, rng=random.Random(1), model=MODEL, newcomers=0)
    assert len({n.node_id for n in chosen}) == 3
    assert chosen[0].node_id == "n004"


@given(
    st.lists(
        st.tuples(st.floats(0.01, 1.0), st.integers(0, 2 * ESTABLISHED_STREAK)),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 7),
    st.integers(0, 3),
    st.randoms(use_true_random=False),
)
def test_the_sampler_picks_the_nodes_choose_picks_for_the_same_keys(
    fleet: list[tuple[float, int]], k: int, room: int, rnd: random.Random
) -> None:
    pool = _fleet([s for s, _ in fleet], [n for _, n in fleet])
    k = min(k, len(pool))
    uniforms = [1.0 - rnd.random() for _ in pool]  # in (0, 1]: log(u) is finite
    # Equal keys are ordered by node id in one and by index in the other.
    keys = [-math.log(u) / weight(n, 1.0, MODEL) for u, n in zip(uniforms, pool, strict=True)]
    assume(len(set(keys)) == len(keys))
    by_choose = choose(pool, k, rng=_Uniforms(uniforms), model=MODEL, newcomers=room)
    # The same draw as Ranking sees it: Exp(1) keys E = -log(u), divided by the weights.
    w = weights(
        np.array([n.score for n in pool]),
        np.array([n.spare for n in pool]),
        newcomers=np.array([not established(n, MODEL) for n in pool]),
    )
    assert w == pytest.approx([weight(n, 1.0, MODEL) for n in pool], rel=1e-12)
    assert -np.log(np.array(uniforms)) / w == pytest.approx(keys, rel=1e-12)
    mask = np.array([not established(n, MODEL) for n in pool])
    by_ranking = Ranking(-np.log(np.array(uniforms)) / w).take(k, newcomers=mask, room=room)
    assert [pool[i].node_id for i in by_ranking] == [n.node_id for n in by_choose]


def test_successive_takes_draw_without_replacement_and_keep_passed_newcomers() -> None:
    keys = np.array([0.1, 0.2, 0.3, 0.4, np.inf])
    newcomer = np.array([True, False, True, False, False])
    ranking = Ranking(keys)
    assert ranking.take(1, newcomers=newcomer, room=0) == [1]  # node 0 passed over
    assert ranking.take(2, newcomers=newcomer, room=1) == [0, 3]  # node 0 still there
    assert ranking.take(5, newcomers=newcomer, room=0) == [2]  # 4 has weight 0
    assert ranking.take(1) == []


def test_the_sampler_draws_what_choose_draws() -> None:
    scores = {"a": 0.95, "b": 0.8, "c": 0.6, "d": 0.4, "e": 0.2}
    ids = list(scores)
    pool = [NodeView(i, "cpu", frozenset({MODEL}), 0.0, score=s) for i, s in scores.items()]
    w = {n.node_id: weight(n, 1.0) for n in pool}
    total = sum(w.values())
    # Successive sampling: first a with w_a / W, then b among the rest.
    exact = {(a, b): w[a] / total * w[b] / (total - w[a]) for a, b in permutations(ids, 2)}
    draws = 20_000
    rng = random.Random(7)
    by_choose = Counter(tuple(n.node_id for n in choose(pool, 2, rng=rng)) for _ in range(draws))
    sampler = Sampler(weights(np.array(list(scores.values()))), np.random.default_rng(7))
    by_sampler = Counter(tuple(ids[i] for i in sampler.ranking().take(2)) for _ in range(draws))
    # 20 cells, 19 degrees of freedom: the 0.1% critical value is 43.8.
    assert _chi_square(by_choose, exact) < 43.8
    assert _chi_square(by_sampler, exact) < 43.8


def _chi_square(counts: Counter[tuple[str, ...]], expected: dict[tuple[str, ...], float]) -> float:
    n = sum(counts.values())
    return sum((counts[cell] - n * p) ** 2 / (n * p) for cell, p in expected.items())


def test_a_ranking_never_yields_a_node_of_weight_zero_nor_one_twice() -> None:
    w = np.array([1.0, 0.0, 2.0, 0.0, 0.5] * 8)
    sampler = Sampler(w, np.random.default_rng(1))
    for _ in range(200):
        ranking = sampler.ranking(exclude=0)
        drawn = ranking.take(1) + ranking.take(2) + ranking.take(30)
        assert len(drawn) == len(set(drawn)) == 23  # 24 of weight > 0, less the excluded
        assert all(w[i] > 0 and i != 0 for i in drawn)
        assert ranking.take(1) == []


def test_updating_a_weight_takes_effect_at_the_next_draw() -> None:
    sampler = Sampler(np.ones(4), np.random.default_rng(2))
    sampler.update(3, 0.0)
    assert all(3 not in sampler.ranking().take(4) for _ in range(100))
    for node in range(3):
        sampler.update(node, 0.0)
    assert sampler.ranking().take(1) == []
    sampler.update(3, 1.0)
    assert sampler.ranking().take(3) == [3]
