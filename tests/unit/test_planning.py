"""The router's plan: nodes for replicas, hidden checks of `auto` jobs, deadlines, and
the fate of a job that waits for nodes."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.protocol.placement import NodeView, established, newcomer_room
from cortensor.protocol.planning import (
    Plan,
    Timing,
    checked_replicas,
    failed,
    newcomers_allowed,
    one_class,
    parallel,
    plan,
    replicas_due,
    waiting,
)
from cortensor.protocol.replication import (
    CHECK_REPLICAS,
    ESTABLISHED_STREAK,
    MAX_REPLICAS,
    MIN_STREAK,
    REPLICAS,
    replicas,
)
from cortensor.protocol.units import OpenJob, assignments_for
from cortensor.schemas import Verdict

MODEL = "all-MiniLM-L6-v2"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
TIMING = Timing(assignment_s=10.0, per_audio_s=0.5)


def node(i: int, streak: int = 0) -> NodeView:
    return NodeView(
        node_id=f"n{i}",
        hw_class="cpu-int8",
        models=frozenset({MODEL}),
        last_seen=0.0,
        score=0.5 + i / 100,
        capacity=4,
        streaks={MODEL: streak},
    )


def job(
    *, redundancy: int = 3, auto: bool = False, taken: frozenset[str] = frozenset(), **kw: object
) -> OpenJob:
    fields: dict[str, object] = {
        "job_id": uuid.uuid4(),
        "task": "embed",
        "model": MODEL,
        "redundancy": redundancy,
        "hw_class": "any",
        "inputs": ["a text"],
        "deadline_at": NOW + timedelta(seconds=60),
        "taken": taken,
        "auto": auto,
    }
    fields.update(kw)
    return OpenJob(**fields)  # type: ignore[arg-type]


def fleet(size: int, streak: int = 0) -> list[NodeView]:
    return [node(i, streak) for i in range(size)]


def planned(result: Plan | str) -> Plan:
    assert isinstance(result, Plan), result
    return result


# -- timing -------------------------------------------------------------------------------


def test_a_replica_has_its_time_and_more_for_longer_audio() -> None:
    assert TIMING.timeout_s({}) == 10.0
    assert TIMING.timeout_s({"start_s": 30.0, "end_s": 60.0}) == 25.0


def test_a_replica_deadline_never_passes_the_jobs() -> None:
    early = job(deadline_at=NOW + timedelta(seconds=4))
    assert TIMING.deadline(early, NOW) == early.deadline_at
    assert TIMING.deadline(job(), NOW) == NOW + timedelta(seconds=10)


# -- fixed redundancy ---------------------------------------------------------------------


@given(k=st.integers(1, 7), size=st.integers(1, 9), seed=st.integers(0, 2**32))
def test_a_fixed_job_gets_k_distinct_untaken_nodes_or_a_reason(
    k: int, size: int, seed: int
) -> None:
    j = job(redundancy=k, taken=frozenset({"n0"}))
    result = plan(j, k, pool=fleet(size), rng=random.Random(seed), now=NOW, timing=TIMING)
    if size - 1 < k:
        assert isinstance(result, str)
        assert f"{size - 1} available" in result
        return
    p = planned(result)
    assert len(set(p.nodes)) == k
    assert "n0" not in p.nodes
    assert p.redundancy == k
    assert p.job == j
    assert p.deadline_at == NOW + timedelta(seconds=10)


def test_the_same_seed_gives_the_same_plan() -> None:
    j = job()
    a = planned(plan(j, 3, pool=fleet(9), rng=random.Random(5), now=NOW, timing=TIMING))
    b = planned(plan(j, 3, pool=fleet(9), rng=random.Random(5), now=NOW, timing=TIMING))
    assert a.nodes == b.nodes


def test_needing_no_replica_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan(job(), 0, pool=fleet(3), rng=random.Random(0), now=NOW, timing=TIMING)


# -- auto: hidden checks ------------------------------------------------------------------


@given(streak=st.integers(0, 10_000), seed=st.integers(0, 2**32))
def test_an_auto_job_sends_its_leader_alone_checked_or_not(streak: int, seed: int) -> None:
    j = job(auto=True, redundancy=REPLICAS)
    p = planned(
        plan(j, REPLICAS, pool=fleet(5, streak), rng=random.Random(seed), now=NOW, timing=TIMING)
    )
    assert len(p.targets) == 1
    # What adaptive replication gives the leader (replication.replicas): a node without
    # a record is always checked.
    assert 1 <= p.redundancy <= MAX_REPLICAS
    if streak == 0:
        assert p.redundancy > 1
    assert p.job == j  # its first attempt
    assert p.deadline_at == TIMING.deadline(j, NOW)


@given(seed=st.integers(0, 2**32))
def test_a_leader_checked_or_alone_gets_the_same_assignment(seed: int) -> None:
    j = job(auto=True, redundancy=REPLICAS)

    def lead(streak: int) -> Plan:
        pool = fleet(5, streak)
        return planned(
            plan(j, REPLICAS, pool=pool, rng=random.Random(seed), now=NOW, timing=TIMING)
        )

    checked, trusted = lead(0), lead(10**9)
    assert checked.redundancy == REPLICAS
    # Whether it is checked is in the ledger only: what the leader is sent is the same.
    assert (checked.job, checked.targets, checked.deadline_at) == (
        trusted.job,
        trusted.targets,
        trusted.deadline_at,
    )
    [a], [b] = (assignments_for(p.job, p.targets, p.deadline_at) for p in (checked, trusted))
    fields = {"assignment_id", "created_at"}
    assert a.model_dump(exclude=fields) == b.model_dump(exclude=fields)
    assert a.attempt == 1


def test_a_checked_auto_job_waits_rather_than_start_without_its_checkers() -> None:
    j = job(auto=True, redundancy=REPLICAS)
    result = plan(j, REPLICAS, pool=fleet(2), rng=random.Random(0), now=NOW, timing=TIMING)
    assert isinstance(result, str)
    assert "needs 3" in result


@given(
    redundancy=st.integers(1, 7),
    live=st.integers(0, 7),
    answered=st.integers(0, 7),
    auto=st.booleans(),
)
def test_replicas_due(redundancy: int, live: int, answered: int, auto: bool) -> None:
    due = replicas_due(redundancy, auto=auto, live=live, answered=answered)
    assert 0 <= due <= max(redundancy - live, 0)
    if auto and answered == 0:
        # No answer yet: one leader at a time, alone; its checks are held back.
        assert due == (0 if live else 1)
    else:
        assert due == max(redundancy - live, 0)


def test_checks_go_once_the_leader_answered() -> None:
    assert replicas_due(REPLICAS, auto=True, live=1, answered=0) == 0
    assert replicas_due(REPLICAS, auto=True, live=1, answered=1) == REPLICAS - 1
    # The leader timed out: a new leader goes, alone again.
    assert replicas_due(REPLICAS, auto=True, live=0, answered=0) == 1
    # A fixed job's replicas all go at once.
    assert replicas_due(3, auto=False, live=0, answered=0) == 3


def test_a_rerouted_or_topped_up_auto_job_gets_what_it_lacks() -> None:
    j = job(auto=True, redundancy=REPLICAS, taken=frozenset({"n0"}), attempt=2)
    p = planned(plan(j, 2, pool=fleet(5), rng=random.Random(1), now=NOW, timing=TIMING))
    assert len(p.targets) == 2
    assert "n0" not in p.nodes
    assert p.redundancy == REPLICAS


# -- the newcomer rule and offences, as the simulation applies them -----------------------

streaks = st.lists(st.integers(0, 3 * MIN_STREAK), min_size=1, max_size=12)


def mixed(values: list[int], offences: int = 0) -> list[NodeView]:
    return [replace(node(i, s), offences=offences) for i, s in enumerate(values)]


@given(values=streaks, seed=st.integers(0, 2**32))
def test_a_newcomer_never_leads_while_an_established_node_is_live(
    values: list[int], seed: int
) -> None:
    pool = mixed(values)
    p = plan(job(auto=True), REPLICAS, pool=pool, rng=random.Random(seed), now=NOW, timing=TIMING)
    if isinstance(p, str):
        return  # too few nodes for the checks the leader would need
    leader = next(n for n in pool if n.node_id == p.nodes[0])
    if any(established(n, MODEL) for n in pool):
        assert established(leader, MODEL)


@given(
    values=streaks,
    redundancy=st.integers(1, MAX_REPLICAS),
    held=st.integers(0, 4),
    seed=st.integers(0, 2**32),
)
def test_newcomers_never_reach_a_majority_of_a_jobs_replicas(
    values: list[int], redundancy: int, held: int, seed: int
) -> None:
    """A job's replicas, those it holds already and those planned now, take at most
    redundancy // 2 newcomers while established nodes are left for the rest."""
    pool = mixed(values)
    taken = frozenset(n.node_id for n in pool[:held])
    needed = redundancy - len(taken)
    if needed < 1:
        return
    j = job(redundancy=redundancy, taken=taken)
    p = plan(j, needed, pool=pool, rng=random.Random(seed), now=NOW, timing=TIMING)
    if isinstance(p, str):
        assert len(pool) - len(taken) < needed
        return
    on_job = [n for n in pool if n.node_id in taken or n.node_id in p.nodes]
    newcomers = sum(not established(n, MODEL) for n in on_job)
    settled_left = sum(
        established(n, MODEL) for n in pool if n.node_id not in taken and n.node_id not in p.nodes
    )
    if settled_left:
        # Established nodes were passed over: newcomers took only the room they had.
        held_newcomers = sum(not established(n, MODEL) for n in pool if n.node_id in taken)
        assert newcomers <= max(redundancy // 2, held_newcomers)


def test_newcomers_fill_the_places_no_established_node_is_left_for() -> None:
    pool = mixed([ESTABLISHED_STREAK, 0, 0, 0])
    p = planned(plan(job(redundancy=3), 3, pool=pool, rng=random.Random(0), now=NOW, timing=TIMING))
    assert "n0" in p.nodes
    assert len(p.nodes) == 3


def test_a_node_gone_from_the_pool_counts_as_a_newcomer_on_its_job() -> None:
    pool = mixed([0, ESTABLISHED_STREAK, ESTABLISHED_STREAK, 0, 0])
    # "gone" held a replica and left: the job may take no newcomer more among 3.
    j = job(redundancy=3, taken=frozenset({"gone"}))
    for seed in range(20):
        p = planned(plan(j, 2, pool=pool, rng=random.Random(seed), now=NOW, timing=TIMING))
        assert sorted(p.nodes) == ["n1", "n2"]


@given(streak=st.integers(0, 10**6), seed=st.integers(0, 2**32))
def test_an_offenders_job_is_never_run_alone(streak: int, seed: int) -> None:
    pool = mixed([streak] * 4, offences=1)
    p = planned(
        plan(job(auto=True), REPLICAS, pool=pool, rng=random.Random(seed), now=NOW, timing=TIMING)
    )
    assert p.redundancy >= CHECK_REPLICAS
    assert len(p.targets) == 1


@given(streak=st.integers(0, 10**6), offences=st.integers(0, 2), seed=st.integers(0, 2**32))
def test_the_leaders_redundancy_is_adaptive_replications(
    streak: int, offences: int, seed: int
) -> None:
    pool = mixed([streak] * 4, offences=offences)
    p = planned(
        plan(job(auto=True), REPLICAS, pool=pool, rng=random.Random(seed), now=NOW, timing=TIMING)
    )
    # The plan draws the leader (one random number per node), then the redundancy.
    rng = random.Random(seed)
    for _ in pool:
        rng.random()
    assert p.redundancy == replicas(streak, rng, offences=offences)
    assert checked_replicas(streak, offences, random.Random(seed)) == replicas(
        streak, random.Random(seed), offences=offences
    )


@given(redundancy=st.integers(1, MAX_REPLICAS), newcomers=st.integers(0, MAX_REPLICAS))
def test_newcomers_allowed(redundancy: int, newcomers: int) -> None:
    assert newcomers_allowed(redundancy, newcomers, leading=True) == 0
    room = newcomers_allowed(redundancy, newcomers, leading=False)
    assert room == newcomer_room(redundancy, newcomers)
    assert newcomers + room <= max(redundancy // 2, newcomers)


# -- split jobs ---------------------------------------------------------------------------


def test_parts_spread_over_fresh_nodes_then_start_a_new_round() -> None:
    pool = fleet(6)
    rng = random.Random(3)
    spread: frozenset[str] = frozenset()
    rounds = []
    for _ in range(3):
        p = planned(plan(job(), 3, pool=pool, rng=rng, now=NOW, timing=TIMING, spread=spread))
        rounds.append(set(p.nodes))
        spread = p.spread
    assert rounds[0].isdisjoint(rounds[1])
    assert rounds[0] | rounds[1] == {n.node_id for n in pool}
    # Every node holds a part: the third part starts the spread afresh.
    assert spread == frozenset(rounds[2])


def test_parallel_parts() -> None:
    assert parallel(9, 3) == 3
    assert parallel(9, "auto") == 9 // REPLICAS
    assert parallel(2, 3) == 1
    assert parallel(0, 1) == 1


# -- waiting jobs -------------------------------------------------------------------------


def test_a_waiting_job_is_sent_waits_or_fails_at_its_deadline() -> None:
    j = job()
    p = planned(plan(j, 3, pool=fleet(3), rng=random.Random(0), now=NOW, timing=TIMING))
    assert waiting(j, NOW, p) is p
    assert waiting(j, NOW, "needs 3 more") is None
    late = NOW + timedelta(seconds=60)
    cases: list[tuple[Plan | str, str]] = [
        (p, "no node took it in time"),
        ("needs 3 more", "needs 3 more"),
    ]
    for plan_now, why in cases:
        verdict = waiting(j, late, plan_now)
        assert isinstance(verdict, Verdict)
        assert verdict.status == "failed"
        assert verdict.reason == f"no eligible nodes before the deadline: {why}"


def test_a_failed_part_names_its_parent_and_its_owner() -> None:
    parent = uuid.uuid4()
    verdict = failed(replace(job(), parent_id=parent, part=2, owner="alice"), "none")
    assert (verdict.parent_id, verdict.part, verdict.task, verdict.model, verdict.owner) == (
        parent,
        2,
        "embed",
        MODEL,
        "alice",
    )


# -- generate jobs run on one class ------------------------------------------------------


def test_a_job_compared_token_for_token_is_pinned_to_the_class_with_most_nodes() -> None:
    fp32 = [replace(node(i), hw_class="cpu-fp32") for i in range(2)]
    int8 = [node(i) for i in range(2, 5)]
    assert one_class(("cpu-fp32", "cpu-int8"), [*fp32, *int8]) == "cpu-int8"
    assert one_class(("cpu-fp32", "cpu-int8"), fp32) == "cpu-fp32"
    # A tie goes to the first class asked; a class not asked is never chosen.
    assert one_class(("cpu-fp32", "cpu-int8"), [*fp32, *int8[:2]]) == "cpu-fp32"
    assert one_class(("cpu-fp32",), int8) is None
    assert one_class(("cpu-fp32", "cpu-int8"), []) is None


@given(st.lists(st.sampled_from(["cpu-fp32", "cpu-int8", "cuda-fp16"]), max_size=12))
def test_the_pinned_class_is_an_asked_one_with_the_most_nodes(classes: list[str]) -> None:
    pool = [replace(node(i), hw_class=c) for i, c in enumerate(classes)]
    asked = ("cpu-fp32", "cpu-int8")
    chosen = one_class(asked, pool)
    counts = {c: classes.count(c) for c in asked}
    if not any(counts.values()):
        assert chosen is None
    else:
        assert chosen in asked
        assert counts[chosen] == max(counts.values())
