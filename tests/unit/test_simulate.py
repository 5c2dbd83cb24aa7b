"""The fleet simulator: its sampler against routing.choose, its fleets, and the issue's
targets on the full 1,000-node, 100,000-job run."""

from __future__ import annotations

import json
import random
from collections import Counter
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from cortensor.cli import app
from cortensor.errors import BadInput
from cortensor.protocol import replication
from cortensor.protocol.placement import NodeView, choose, weight
from cortensor.tools.simulate import (
    DEFAULT_MIX,
    JobRecord,
    Mode,
    Sampler,
    SimConfig,
    Simulation,
    fleet_modes,
    parse_mix,
    plot,
    simulate,
    weights,
)

MODEL = "m"


def run(**overrides: Any) -> dict[str, Any]:
    report, _ = simulate(SimConfig(**{"nodes": 60, "jobs": 3000, **overrides}))
    return report


def only(mode: Mode, share: float = 1.0) -> dict[str, Any]:
    """Config fields for a fleet whose faulty share is all of one mode."""
    return {"dishonest": share, "mix": {mode: 1.0}}


# -- routing --------------------------------------------------------------------------


@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20),
    st.sampled_from([0.0, 0.5, 1.0, 2.0]),
)
def test_vectorized_weights_are_routing_weight(scores: list[float], temperature: float) -> None:
    expected = [
        weight(NodeView(f"n{i}", "cpu", frozenset({MODEL}), 0.0, score=s), temperature)
        for i, s in enumerate(scores)
    ]
    assert weights(np.array(scores), temperature) == pytest.approx(expected, rel=1e-12)


def _chi_square(counts: Counter[tuple[str, ...]], expected: dict[tuple[str, ...], float]) -> float:
    n = sum(counts.values())
    return sum((counts[cell] - n * p) ** 2 / (n * p) for cell, p in expected.items())


def test_the_sampler_draws_what_routing_choose_draws() -> None:
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
    for cell in exact:
        assert by_sampler[cell] / draws == pytest.approx(by_choose[cell] / draws, abs=0.015)


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


# -- the fleet ------------------------------------------------------------------------


def test_the_default_mix_is_in_percent_of_a_fleet_at_20_percent_faulty() -> None:
    counts = fleet_modes(1000, 0.2, DEFAULT_MIX)
    assert counts == {
        "honest": 800,
        "random": 40,
        "lazy": 20,
        "noisy": 30,
        "colluding": 40,
        "intermittent": 50,
        "slow": 10,
        "crash": 10,
    }


@given(
    st.integers(1, 3000),
    st.floats(0.0, 1.0),
    st.dictionaries(
        st.sampled_from(["random", "lazy", "noisy", "colluding", "intermittent", "slow", "crash"]),
        st.floats(0.01, 100.0),
        min_size=1,
    ),
)
def test_fleet_counts_add_up_and_colluders_come_in_pairs(
    nodes: int, dishonest: float, mix: dict[Mode, float]
) -> None:
    counts = fleet_modes(nodes, dishonest, mix)
    assert sum(counts.values()) == nodes
    assert all(c >= 0 for c in counts.values())
    assert counts["colluding"] % 2 == 0
    assert nodes - counts["honest"] in (round(nodes * dishonest), round(nodes * dishonest) - 1)


def test_parse_mix() -> None:
    assert parse_mix("random=4, colluding=2,") == {"random": 4.0, "colluding": 2.0}
    for bad in ["", "honest=1", "random", "random=x", "random=-1", "random=0", "random=nan"]:
        with pytest.raises(BadInput):
            parse_mix(bad)


# -- runs -----------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_report() -> None:
    first, second, other = run(seed=5), run(seed=5), run(seed=6)
    for report in (first, second, other):
        report.pop("wall_s")
    assert first == second
    assert first != other


def test_an_honest_fleet_delivers_only_right_results_and_quarantines_nobody() -> None:
    report = run(dishonest=0.0)
    assert report["wrong_delivered"]["count"] == 0
    assert report["inconclusive_jobs"] == report["failed_jobs"] == 0
    assert report["honest_wrongly_quarantined"]["count"] == 0
    assert report["probes"] == {"total": 3 * 60, "admission": 3 * 60}
    assert report["corrections"] == report["revalidated"] == 0


@pytest.mark.parametrize("probation", [True, False])
def test_an_always_random_node_is_quarantined_within_20_of_its_jobs(probation: bool) -> None:
    report = run(probation=probation, **only("random", 0.1))
    random_nodes = report["modes"]["random"]
    assert random_nodes["nodes"] == 6
    assert random_nodes["ever_quarantined"] == random_nodes["quarantined_at_end"]
    # Probation catches it at its first probe; active, its third failure quarantines it.
    assert random_nodes["jobs_until_quarantined"]["max"] == (1 if probation else 3)
    _caught_or_barely_used(random_nodes)
    assert report["honest_wrongly_quarantined"]["count"] == 0


def _caught_or_barely_used(mode: dict[str, Any]) -> None:
    """Every node of an always-faulty mode is quarantined, or has not yet done the three
    jobs that quarantine it: two failures cut its weight, by the square of its score, to
    an eighth of an honest node's, so it may wait long for a third job."""
    free = mode["never_quarantined"]
    assert mode["ever_quarantined"] + free["count"] == mode["nodes"]
    assert (free["most_jobs"] or 0) < 3


@pytest.mark.parametrize("mode", ["lazy", "noisy", "colluding", "slow"])
def test_every_always_faulty_mode_is_caught_on_real_jobs_too(mode: Mode) -> None:
    report = run(probation=False, **only(mode, 0.2))
    caught = report["modes"][mode]
    assert caught["nodes"] == 12
    assert caught["ever_quarantined"] >= 10
    assert caught["jobs_until_quarantined"]["max"] <= 20
    _caught_or_barely_used(caught)


def test_colluders_win_a_majority_only_when_both_of_a_pair_are_picked() -> None:
    records: list[JobRecord] = []
    # Half the fleet colludes and starts active: pairs do meet.
    sim = Simulation(
        SimConfig(nodes=12, jobs=400, probation=False, seed=3, **only("colluding", 0.5)),
        on_job=records.append,
    )
    report = sim.run()
    pair_of = {sim.ids[n]: p for n, p in sim.pair.items()}
    wrong_majorities = 0
    for r in records:
        pairs = Counter(pair_of[x.node_id] for x in r.replicas if x.node_id in pair_of)
        together = any(count >= 2 for count in pairs.values())
        if r.redundancy > 1 and r.delivered is not None and r.delivered != r.truth:
            wrong_majorities += 1
            backers = Counter(pair_of.get(x, -1) for x in r.decision.agreeing)
            assert together
            assert max(backers.values()) >= 2
            assert all(x in pair_of for x in r.decision.agreeing)
        if not together and r.redundancy > 1:
            assert r.delivered is None or r.delivered == r.truth
    assert any(pair_of.keys() & {x.node_id for x in r.replicas} for r in records)
    assert wrong_majorities == report["wrong_majorities"] > 0


def test_unique_wrong_answers_never_make_a_majority() -> None:
    # Only random nodes, all active: every job escalates to the cap and stays open.
    report = run(nodes=20, jobs=50, probation=False, **only("random"))
    assert report["wrong_delivered"]["count"] == 0
    assert report["inconclusive_jobs"] == 50
    assert report["mean_replicas_per_job"] == replication.MAX_REPLICAS


def test_replicas_per_job_falls_towards_1_as_honest_streaks_grow() -> None:
    _, sim = simulate(SimConfig(nodes=100, jobs=20_000, dishonest=0.0, seed=2))
    rpj = sim.replicas_per_job
    assert rpj[:500].mean() == replication.REPLICAS  # nobody has MIN_STREAK yet
    late = rpj[-5000:].mean()
    spot_checked = 1 + (replication.REPLICAS - 1) * replication.SPOT_CHECK
    assert late == pytest.approx(spot_checked, abs=0.05)


def test_crashed_nodes_drop_out_and_their_replicas_are_rerouted() -> None:
    config = SimConfig(nodes=60, jobs=4000, **only("crash", 0.2))
    report, sim = simulate(config)
    ttl_jobs = config.node_ttl_s / config.job_interval_s
    crashed = report["modes"]["crash"]
    assert crashed["nodes"] == 12
    # Gone at its first missed deadline, or when its heartbeats have been missing a TTL.
    for node, at in sim.crash_at.items():
        if at + ttl_jobs < config.jobs:
            assert not sim.alive[node]
    assert crashed["dropped_as_dead"] >= 9
    assert crashed["ever_quarantined"] == 0
    assert report["wrong_delivered"]["count"] == 0
    assert report["inconclusive_jobs"] == report["failed_jobs"] == 0


def test_a_failed_spot_check_revalidates_and_corrects_unchecked_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # BOINC's threshold lets an intermittent cheater run alone often enough to be corrected.
    monkeypatch.setattr(replication, "MIN_STREAK", 10)
    report = run(jobs=10_000, intermittent_p=0.05, seed=4, **only("intermittent", 0.2))
    assert report["revalidated"] > 0
    assert report["corrections"] > 0
    assert report["wrong_delivered"]["count"] > report["wrong_standing_after_corrections"]
    assert report["wrong_delivered_unreplicated"] == report["wrong_delivered"]["count"]
    assert report["honest_wrongly_quarantined"]["count"] == 0


def test_plot_writes_a_png(tmp_path: Path) -> None:
    _, sim = simulate(SimConfig(nodes=40, jobs=500))
    path = tmp_path / "sim.png"
    plot(sim, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_cli_prints_json_and_draws_the_plot(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    args = ["simulate", "--nodes", "50", "--jobs", "300", "--mix", "random=1,crash=1"]
    result = CliRunner().invoke(app, [*args, "--plot", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mix"]["random"] == report["mix"]["crash"] == 5
    assert path.exists()
    bad = CliRunner().invoke(app, ["simulate", "--mix", "sneaky=1"])
    assert bad.exit_code == 2


@pytest.mark.slow
def test_the_issue_targets_on_1000_nodes_and_100000_jobs() -> None:
    report, _ = simulate(SimConfig())
    assert report["mix"]["honest"] == 800
    assert report["wrong_delivered"]["rate"] <= 0.001
    assert report["mean_replicas_after_warmup"] <= 1.5
    for mode in ("random", "lazy", "noisy", "colluding", "slow"):
        m = report["modes"][mode]
        assert m["ever_quarantined"] == m["nodes"] > 0
        assert m["jobs_until_quarantined"]["max"] <= 20
    intermittent = report["modes"]["intermittent"]
    assert intermittent["jobs_until_quarantined"]["max"] <= 200
    assert (intermittent["never_quarantined"]["most_jobs"] or 0) < 200
    assert report["honest_wrongly_quarantined"] == {"count": 0, "ids": []}
    assert all(report["targets"].values())
    assert report["wall_s"] < 60
