"""The fleet simulator: its fleets, its fault modes (those that adapt included), the
policy's behaviour on small runs, and the targets on the full 1,000-node, 100,000-job run."""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from cortensor.cli import app
from cortensor.errors import BadInput
from cortensor.protocol import replication
from cortensor.protocol.adjudication import Case, judge
from cortensor.protocol.comparators import COMPARATORS
from cortensor.protocol.consensus import Replica
from cortensor.protocol.reputation import LATENESS_LIMIT, STEP_LATE, Standing
from cortensor.tools.simulate import (
    ALWAYS_DISHONEST,
    DEFAULT_MIX,
    FAULT_MODES,
    JobRecord,
    Mode,
    SimConfig,
    Simulation,
    fleet_modes,
    judge_job,
    parse_mix,
    plot,
    simulate,
)

ANSWERS = [[[0.6, 0.8]], [[0.8, -0.6]], [[-0.6, -0.8]]]
"""Embeddings: a truth and two lies, each orthogonal or opposite to the others."""


@given(
    answers=st.lists(st.sampled_from(range(len(ANSWERS))), min_size=0, max_size=7),
    late=st.integers(0, 3),
    redundancy=st.integers(1, replication.MAX_REPLICAS),
    auto=st.booleans(),
)
def test_the_simulation_decides_a_job_as_the_guard_judges_it(
    answers: list[int], late: int, redundancy: int, auto: bool
) -> None:
    """judge_job, which decides every job of the simulation, gives the guard's verdict
    status, agreeing and disagreeing nodes and events for the same replicas."""
    replicas = [
        Replica(f"n{i}", str(uuid.uuid4()), "fp32", ANSWERS[a], None, f"a{i}")
        for i, a in enumerate(answers)
    ]
    timed_out = [(f"t{i}", f"late{i}") for i in range(late)]
    case = Case(uuid.uuid4(), "embed", "m", redundancy, replicas, timed_out, auto=auto)
    verdict, events = judge(case)
    judged = judge_job(
        replicas, redundancy, auto=auto, timed_out=timed_out, compare=COMPARATORS["embed"]
    )
    assert judged.status == verdict.status
    assert list(judged.decision.agreeing) == verdict.agreeing
    assert list(judged.decision.disagreeing) == verdict.disagreeing
    assert list(judged.events) == events


QUIET = {"timeout_rate": 0.0, "overload_every_s": math.inf}
"""Honest nodes that never miss a deadline."""


def run(**overrides: Any) -> dict[str, Any]:
    report, _ = simulate(SimConfig(**{"nodes": 60, "jobs": 3000, **overrides}))
    return report


def only(mode: Mode, share: float = 1.0) -> dict[str, Any]:
    """Config fields for a fleet whose faulty share is all of one mode."""
    return {"dishonest": share, "mix": {mode: 1.0}}


# -- the fleet ------------------------------------------------------------------------


def test_the_default_mix_is_in_percent_of_a_fleet_at_20_percent_faulty() -> None:
    counts = fleet_modes(1000, 0.2, DEFAULT_MIX)
    assert counts == {
        "honest": 800,
        "random": 10,
        "lazy": 10,
        "noisy": 10,
        "colluding": 10,
        "intermittent": 20,
        "slow": 10,
        "crash": 10,
        "probe-aware": 10,
        "adaptive": 10,
        "sybil": 100,
    }
    assert set(DEFAULT_MIX) == set(FAULT_MODES)


@given(
    st.integers(1, 3000),
    st.floats(0.0, 1.0),
    st.dictionaries(st.sampled_from(FAULT_MODES), st.floats(0.01, 100.0), min_size=1),
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
    assert parse_mix("sybil=10,probe-aware=1,adaptive=1")["sybil"] == 10.0
    for bad in ["", "honest=1", "random", "random=x", "random=-1", "random=0", "random=nan"]:
        with pytest.raises(BadInput):
            parse_mix(bad)


# -- runs -----------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_report() -> None:
    first, second, other = run(seed=5), run(seed=5), run(seed=6)
    for report in (first, second, other):
        report.pop("wall_s")
        report.pop("targets")
    assert first == second
    assert first != other


def test_an_honest_fleet_delivers_only_right_results_and_quarantines_nobody() -> None:
    report = run(dishonest=0.0, **QUIET)
    assert report["wrong_delivered"]["count"] == 0
    assert report["inconclusive_jobs"] == report["failed_jobs"] == 0
    assert report["honest_wrongly_quarantined"]["count"] == 0
    assert report["probes"]["admission"] == 3 * 60
    assert report["corrections"] == report["revalidated"] == 0


def test_overloaded_honest_nodes_are_never_quarantined() -> None:
    # Overloaded a third of the time, missing every deadline meanwhile, and 5% besides.
    report = run(
        dishonest=0.0, jobs=20_000, timeout_rate=0.05, overload_every_s=60.0, overload_s=30.0
    )
    assert report["honest_timeouts"] > 1000
    assert report["honest_wrongly_quarantined"]["count"] == 0
    assert report["wrong_delivered"]["count"] == 0


@pytest.mark.parametrize("probation", [True, False])
def test_an_always_random_node_is_quarantined_within_10_of_its_jobs(probation: bool) -> None:
    report = run(probation=probation, **only("random", 0.1))
    random_nodes = report["modes"]["random"]
    assert random_nodes["nodes"] == 6
    assert random_nodes["ever_quarantined"] == random_nodes["quarantined_at_end"]
    # Probation catches it at its first probe; active, its third failure quarantines it,
    # unless it is so rarely picked (a newcomer with a falling score) that it never has 3.
    if probation:
        assert random_nodes["jobs_until_quarantined"]["max"] == 1
    else:
        assert (random_nodes["jobs_until_quarantined"]["max"] or 3) == 3
    _caught_or_barely_used(random_nodes)
    assert report["honest_wrongly_quarantined"]["count"] == 0


def _caught_or_barely_used(mode: dict[str, Any], jobs: int = 3) -> None:
    """Every identity of an always-faulty mode is quarantined, or has not yet done the
    `jobs` that quarantine it: once others are established, a newcomer weighs a tenth,
    and a failing one less still, so it may wait long for them."""
    free = mode["never_quarantined"]
    assert mode["ever_quarantined"] + free["count"] == mode["identities"]
    assert (free["most_jobs"] or 0) < jobs


@pytest.mark.parametrize("mode", ["lazy", "noisy", "colluding"])
def test_every_always_wrong_mode_is_caught_on_real_jobs_too(mode: Mode) -> None:
    report = run(probation=False, **only(mode, 0.2))
    caught = report["modes"][mode]
    assert caught["nodes"] == 12
    assert caught["ever_quarantined"] >= 3
    assert caught["jobs_until_quarantined"]["max"] <= 10
    _caught_or_barely_used(caught, 10)


def test_a_node_that_never_answers_is_caught_on_probation_and_later_by_lateness() -> None:
    on_probation = run(**only("slow", 0.1))["modes"]["slow"]
    assert on_probation["jobs_until_quarantined"]["max"] == 5
    assert on_probation["barred_at_end"] == 0  # late, not an offender
    # Admitted without probes, it misses 40 deadlines in a row, if it gets that many.
    admitted = run(probation=False, jobs=10_000, **only("slow", 0.1))["modes"]["slow"]
    misses = math.ceil(LATENESS_LIMIT / STEP_LATE)
    assert admitted["jobs_until_quarantined"]["max"] in (None, misses)
    _caught_or_barely_used(admitted, misses)


def test_a_probe_aware_node_passes_its_probes_and_fails_on_real_jobs() -> None:
    report = run(**only("probe-aware", 0.1))
    aware = report["modes"]["probe-aware"]
    # Admitted (it knows every job on probation is a probe), then caught on real jobs.
    assert aware["nodes"] == 6
    assert aware["ever_quarantined"] > 0
    assert aware["jobs_until_quarantined"]["max"] <= 10
    _caught_or_barely_used(aware, 10)
    assert report["probes"]["recognised_by_cheaters"] > 0
    assert report["wrong_delivered"]["count"] == 0


def test_an_adaptive_node_cheats_only_alone_and_once_it_counts_itself_trusted() -> None:
    sim = Simulation(SimConfig(nodes=20, jobs=10, **only("adaptive", 0.5)))
    node = next(i for i, m in enumerate(sim.modes) if m == "adaptive")
    sim.standing[node] = Standing(trust="active")
    answers = [sim.answer(node, job, job) for job in range(replication.MIN_STREAK)]
    assert answers == list(range(replication.MIN_STREAK))  # honest until trusted
    assert sim.answer(node, 100, 100, peer=True) == 100  # a checker sees the leader's
    assert sim.answer(node, 101, 101) != 101  # alone: cheats
    sim.standing[node] = Standing(trust="quarantined")
    assert sim.answer(node, 102, 102) == 102  # probes only: honest


def test_a_sybil_identity_is_caught_re_registers_and_never_wins_once_others_are_trusted() -> None:
    records: list[JobRecord] = []
    config = SimConfig(nodes=100, jobs=6000, seed=2, **QUIET, **only("sybil", 0.1))
    report, _ = simulate(config, on_job=records.append)
    sybils = report["modes"]["sybil"]
    assert sybils["nodes"] == 10
    # Every identity caught came back under a fresh one; one not caught yet has had
    # fewer than 10 jobs (a newcomer weighs a tenth, and gets few).
    assert report["sybil_registrations"] == sybils["ever_quarantined"] >= sybils["nodes"] - 1
    assert sybils["never_quarantined"]["most_jobs"] < 10
    assert sybils["identities"] == sybils["nodes"] + report["sybil_registrations"]
    assert sybils["jobs_until_quarantined"]["max"] <= 10
    # Once half the fleet is established, a newcomer never sits in a job beside another.
    late = [r for r in records if r.job > 3000]
    assert late
    assert all(r.delivered == r.truth for r in late if r.delivered is not None)
    assert report["honest_wrongly_quarantined"]["count"] == 0


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
    assert wrong_majorities == report["wrong_majorities"]


def test_unique_wrong_answers_never_make_a_majority() -> None:
    # Only random nodes, all active: every job escalates to the cap and stays open.
    report = run(nodes=20, jobs=50, probation=False, **only("random"))
    assert report["wrong_delivered"]["count"] == 0
    assert report["inconclusive_jobs"] == 50
    assert report["mean_replicas_per_job"] == replication.MAX_REPLICAS


def test_replicas_per_job_falls_towards_one_check_in_a_few_as_honest_streaks_grow() -> None:
    _, sim = simulate(SimConfig(nodes=100, jobs=20_000, dishonest=0.0, seed=2, **QUIET))
    rpj = sim.replicas_per_job
    assert rpj[:20].mean() == replication.REPLICAS  # nobody is established yet
    late = rpj[-5000:].mean()
    checked = 1 + (replication.CHECK_REPLICAS - 1) * replication.SPOT_CHECK
    assert checked <= late <= checked + 0.05


def test_crashed_nodes_drop_out_and_their_replicas_are_rerouted() -> None:
    config = SimConfig(nodes=60, jobs=4000, **QUIET, **only("crash", 0.2))
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
    # A low threshold lets an intermittent cheater run alone often enough to be corrected.
    monkeypatch.setattr(replication, "MIN_STREAK", 10)
    report = run(jobs=10_000, intermittent_p=0.05, seed=4, **QUIET, **only("intermittent", 0.2))
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
    result = CliRunner().invoke(app, [*args, "--timeout-rate", "0", "--plot", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mix"]["random"] == report["mix"]["crash"] == 5
    assert report["timeout_rate"] == 0.0
    assert path.exists()
    bad = CliRunner().invoke(app, ["simulate", "--mix", "sneaky=1"])
    assert bad.exit_code == 2


@pytest.mark.slow
def test_the_targets_on_1000_nodes_and_100000_jobs() -> None:
    report, _ = simulate(SimConfig())
    assert report["mix"]["honest"] == 800
    assert report["mix"]["sybil"] == 100
    assert report["wrong_delivered"]["rate"] <= 0.001
    assert report["mean_replicas_after_warmup"] <= 1.3
    for mode in sorted(ALWAYS_DISHONEST):
        m = report["modes"][mode]
        assert m["ever_quarantined"] >= m["nodes"] > 0
    intermittent = report["modes"]["intermittent"]
    # The suspicion test catches a node wrong on 10% of its jobs within 150 checked
    # results at the 99th percentile (docs/trust.md): the slowest of 20 such nodes
    # passes the 100-job target on most seeds, not all (`targets` reports it per run).
    assert intermittent["jobs_until_quarantined"]["max"] <= 150
    assert intermittent["never_quarantined"]["most_jobs"] < 150
    assert report["honest_wrongly_quarantined"] == {"count": 0, "ids": []}
    assert set(report["targets"]) == {
        "wrong_delivered_at_most_0.1%",
        "mean_replicas_after_warmup_at_most_1.3",
        "always_dishonest_quarantined_within_10_jobs",
        "intermittent_quarantined_within_100_jobs",
        "no_honest_node_quarantined",
        "wall_time_under_10_s",
    }
    # Its wall time is a benchmark figure (`cortensor simulate` prints it), not asserted
    # here: a shared machine's load decides it.
