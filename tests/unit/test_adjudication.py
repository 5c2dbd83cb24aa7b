"""The guard's judgement: a verdict and one reputation event per replica; and the
decision around it (adjudicate): wait, escalate, or conclude."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.protocol.adjudication import (
    Case,
    Conclude,
    Escalate,
    Reopen,
    Wait,
    accepted_alone,
    adjudicate,
    at_deadline,
    events_of,
    judge,
    score_late,
)
from cortensor.protocol.comparators import COMPARATORS
from cortensor.protocol.consensus import Replica, decide
from cortensor.protocol.replication import MAX_REPLICAS, REPLICAS, escalate
from cortensor.schemas import ANONYMOUS, Verdict

MODEL = "all-MiniLM-L6-v2"
TRUTH = [[0.6, 0.8], [1.0, 0.0]]
LIE = [[0.8, -0.6], [0.0, 1.0]]
OTHER_LIE = [[-0.6, -0.8], [-1.0, 0.0]]  # opposite to the truth, orthogonal to LIE
ANSWERS: list[Any] = [TRUTH, LIE, OTHER_LIE]


def replica(node_id: str, output: object = TRUTH, *, error: str | None = None) -> Replica:
    return Replica(
        node_id=node_id,
        result_id=str(uuid.uuid4()),
        precision="fp32",
        output=output,
        error=error,
        assignment_id=f"asg-{node_id}",
    )


def case(
    replicas: list[Replica], *, redundancy: int = 3, timed_out: Sequence[tuple[str, str]] = ()
) -> Case:
    return Case(
        job_id=uuid.uuid4(),
        task="embed",
        model=MODEL,
        redundancy=redundancy,
        replicas=replicas,
        timed_out=list(timed_out),
    )


def test_verified_emits_agreed_and_disagreed_events_per_node() -> None:
    replicas = [replica("a"), replica("liar", LIE), replica("b")]
    verdict, events = judge(case(replicas))
    assert verdict.status == "verified"
    assert sorted(events) == sorted(
        [("a", "asg-a", "agreed"), ("b", "asg-b", "agreed"), ("liar", "asg-liar", "disagreed")]
    )
    assert set(verdict.agreeing) == {"a", "b"}
    assert verdict.disagreeing == ["liar"]


def test_verdict_carries_canonical_embeddings_and_result_id() -> None:
    replicas = [replica("liar", LIE), replica("a"), replica("b")]
    c = case(replicas)
    verdict, _ = judge(c)
    assert verdict.embeddings == TRUTH
    assert verdict.canonical_result_id == uuid.UUID(replicas[1].result_id)
    assert verdict.job_id == c.job_id
    assert verdict.task == "embed"
    assert verdict.model == MODEL
    assert verdict.replicas == 3
    assert verdict.timed_out == []
    assert isinstance(verdict, Verdict)


def test_timed_out_replicas_emit_timed_out_events() -> None:
    replicas = [replica("a"), replica("b")]
    verdict, events = judge(case(replicas, timed_out=[("asg-slow", "slow")]))
    assert verdict.status == "verified"
    assert ("slow", "asg-slow", "timed_out") in events
    assert Counter(kind for _, _, kind in events) == {"agreed": 2, "timed_out": 1}
    assert verdict.timed_out == ["slow"]
    assert verdict.replicas == 2


def test_no_replicas_fails_with_only_timed_out_events() -> None:
    late = [("asg-1", "n1"), ("asg-2", "n2"), ("asg-3", "n3")]
    c = case([], timed_out=late)
    verdict, events = judge(c)
    assert verdict.status == "failed"
    assert "3 timed out" in verdict.reason
    assert verdict.embeddings is None
    assert verdict.canonical_result_id is None
    assert verdict.timed_out == ["n1", "n2", "n3"]
    assert verdict.job_id == c.job_id
    assert events == [
        ("n1", "asg-1", "timed_out"),
        ("n2", "asg-2", "timed_out"),
        ("n3", "asg-3", "timed_out"),
    ]


def test_no_replicas_and_nothing_timed_out_still_fails() -> None:
    verdict, events = judge(case([]))
    assert verdict.status == "failed"
    assert events == []


def test_inconclusive_has_no_embeddings_and_blames_no_replica() -> None:
    verdict, events = judge(case([replica("a")], timed_out=[("asg-x", "x"), ("asg-y", "y")]))
    assert verdict.status == "inconclusive"
    assert verdict.embeddings is None
    assert verdict.canonical_result_id is None
    assert verdict.agreeing == []
    assert verdict.disagreeing == []
    # Only the late nodes are known to have done wrong.
    assert sorted(kind for _, _, kind in events) == ["timed_out", "timed_out"]


def test_one_event_per_replica_with_its_own_assignment_id() -> None:
    replicas = [replica(f"n{i}", TRUTH if i % 2 == 0 else LIE) for i in range(5)]
    _, events = judge(case(replicas, redundancy=5))
    assert len(events) == 5
    assert {(node, assignment) for node, assignment, _ in events} == {
        (f"n{i}", f"asg-n{i}") for i in range(5)
    }
    kinds = {node: kind for node, _, kind in events}
    assert kinds == {
        "n0": "agreed",
        "n1": "disagreed",
        "n2": "agreed",
        "n3": "disagreed",
        "n4": "agreed",
    }


def test_verdict_survives_a_json_round_trip() -> None:
    verdict, _ = judge(case([replica("a"), replica("b"), replica("c")]))
    assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict


def test_late_replicas_are_held_against_the_canonical_answer() -> None:
    canonical = replica("a")
    late = [replica("b"), replica("liar", LIE), replica("broken", error="oom")]

    events = score_late("embed", canonical, late)

    assert [(node, kind) for node, _, kind in events] == [
        ("b", "agreed"),
        ("liar", "disagreed"),
        ("broken", "disagreed"),
    ]
    assert [assignment for _, assignment, _ in events] == [r.assignment_id for r in late]


# -- adjudicate: wait, escalate or conclude ---------------------------------------------


def replicas_of(answers: Sequence[int | None]) -> list[Replica]:
    """Replicas answering ANSWERS[i], or failing where the answer is None."""
    return [
        replica(f"n{i}", None, error="boom") if a is None else replica(f"n{i}", ANSWERS[a])
        for i, a in enumerate(answers)
    ]


_REDUNDANCY = st.sampled_from([1, 3, 5, 7])
_ANSWER = st.one_of(st.none(), st.integers(0, len(ANSWERS) - 1))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A job of some redundancy with up to that many replicas in, the others out."""
    redundancy = draw(_REDUNDANCY)
    answers = draw(st.lists(_ANSWER, min_size=1, max_size=redundancy))
    return replace(
        case(replicas_of(answers), redundancy=redundancy),
        pending=redundancy - len(answers),
        auto=draw(st.booleans()),
    )


def majority(c: Case) -> bool:
    """Whether some answer is given by a strict majority of the redundancy."""
    valid = [r.output for r in c.replicas if r.error is None]
    top = max((valid.count(a) for a in ANSWERS), default=0)
    return top >= c.redundancy // 2 + 1


@given(cases())
def test_a_strict_majority_concludes_at_once(c: Case) -> None:
    outcome = adjudicate(c)
    if majority(c):
        assert isinstance(outcome, Conclude)
        assert outcome.verdict.status == "verified"
        assert outcome.verdict.embeddings == next(
            r.output for r in c.replicas if r.error is None and r.output is not None
            and [x.output for x in c.replicas].count(r.output) >= c.redundancy // 2 + 1
        )  # fmt: skip
    else:
        assert not (isinstance(outcome, Conclude) and outcome.verdict.status == "verified")


@given(cases())
def test_no_decision_without_a_majority_until_every_replica_is_in(c: Case) -> None:
    outcome = adjudicate(c)
    if not majority(c) and len(c.replicas) < c.redundancy:
        assert isinstance(outcome, Wait)
    if not majority(c) and len(c.replicas) == c.redundancy:
        more = escalate(c.redundancy)
        if more is None:
            assert isinstance(outcome, Conclude)
            assert outcome.verdict.status == "inconclusive"
        else:
            assert outcome == Escalate(more)


def one_hot(i: int) -> list[list[float]]:
    """An answer orthogonal to every other one_hot(j)."""
    return [[1.0 if k == i else 0.0 for k in range(MAX_REPLICAS)]]


@given(st.sampled_from([3, 5]))
def test_escalation_stops_at_the_cap(redundancy: int) -> None:
    c = case([replica(f"n{i}", one_hot(i)) for i in range(redundancy)], redundancy=redundancy)
    seen = []
    outcome = adjudicate(c)
    while isinstance(outcome, Escalate):
        assert outcome.redundancy <= MAX_REPLICAS
        seen.append(outcome.redundancy)
        # Every new replica gives yet another answer: the split never resolves.
        more = [replica(f"n{i}", one_hot(i)) for i in range(len(c.replicas), outcome.redundancy)]
        c = replace(c, redundancy=outcome.redundancy, replicas=c.replicas + more)
        outcome = adjudicate(c)
    assert seen == list(range(redundancy + 2, MAX_REPLICAS + 1, 2))
    assert c.redundancy == MAX_REPLICAS
    assert isinstance(outcome, Conclude)
    assert outcome.verdict.status == "inconclusive"
    assert outcome.events == ()


@given(cases())
def test_events_only_for_checked_results(c: Case) -> None:
    outcome = adjudicate(replace(c, pending=0, redundancy=len(c.replicas)))
    if not isinstance(outcome, Conclude):
        return
    judged = [kind for _, _, kind in outcome.events if kind != "timed_out"]
    if c.auto and len(c.replicas) == 1:
        assert judged == []
        assert outcome.unchecked
    else:
        assert not outcome.unchecked
        if outcome.verdict.status == "verified":
            assert len(judged) == len(c.replicas)
        else:
            assert judged == []


@given(cases(), st.lists(st.tuples(st.text(max_size=3), st.text(max_size=3)), max_size=3))
def test_judge_gives_the_events_of_events_of(c: Case, late: list[tuple[str, str]]) -> None:
    """The guard's events are the timeouts, then events_of the decision: the one rule
    the simulation calls too."""
    c = replace(c, timed_out=late)
    _, events = judge(c)
    decision = decide(c.replicas, c.redundancy, COMPARATORS[c.task])
    assignment_of = {r.node_id: r.assignment_id for r in c.replicas}
    checked = not accepted_alone(c.redundancy, auto=c.auto)
    timeouts = [(node, asg, "timed_out") for asg, node in late]
    assert events == timeouts + events_of(decision, assignment_of, checked=checked)
    assert events_of(decision, assignment_of, checked=False) == []
    if decision.status != "verified":
        assert events_of(decision, assignment_of, checked=True) == []


def test_a_lone_auto_result_concludes_unchecked_without_events() -> None:
    c = replace(case([replica("a")], redundancy=1), auto=True)
    outcome = adjudicate(c)
    assert isinstance(outcome, Conclude)
    assert (outcome.verdict.status, outcome.unchecked, outcome.events) == ("verified", True, ())


def test_a_checked_auto_leader_waits_and_asks_for_its_checks() -> None:
    leader = replace(case([replica("leader")], redundancy=REPLICAS), auto=True)
    assert adjudicate(leader) == Wait(due=REPLICAS - 1)
    # Once the checks are out, nothing more is due.
    assert adjudicate(replace(leader, pending=REPLICAS - 1)) == Wait(due=0)
    # A fixed job's replicas all went out together: nothing is ever due from a result.
    fixed = case([replica("a")], redundancy=3)
    assert adjudicate(replace(fixed, pending=2)) == Wait(due=0)


def test_one_checker_agreeing_with_the_leader_verifies_early() -> None:
    c = replace(case([replica("leader"), replica("checker")], redundancy=3), pending=1, auto=True)
    outcome = adjudicate(c)
    assert isinstance(outcome, Conclude)
    assert outcome.verdict.status == "verified"
    assert sorted(kind for _, _, kind in outcome.events) == ["agreed", "agreed"]


def test_a_caught_node_has_its_unchecked_results_reopened() -> None:
    c = case([replica("a"), replica("liar", LIE), replica("b")])
    outcome = adjudicate(c)
    assert isinstance(outcome, Conclude)
    assert outcome.reopen == Reopen(("liar",))
    assert outcome.publish


def test_a_probe_is_judged_against_its_reference_yet_reads_like_a_real_job() -> None:
    base = case([replica("n", TRUTH)], redundancy=1)
    for answer, kind in [(TRUTH, "agreed"), (LIE, "disagreed")]:
        probe = replace(base, replicas=[replica("n", answer)], reference=TRUTH)
        outcome = adjudicate(probe)
        assert isinstance(outcome, Conclude)
        # The event holds the comparison with the reference; the verdict is the one a
        # real job run alone would get, and it is published like any other.
        assert outcome.events == (("n", "asg-n", kind),)
        assert outcome.verdict.status == "verified"
        assert outcome.verdict.embeddings == answer
        assert (outcome.publish, outcome.unchecked) == (True, False)
        # A failed probe reopens what its node ran alone, like a failed check does.
        assert outcome.reopen == (Reopen(("n",)) if kind == "disagreed" else None)


def _first(by: str, output: Any) -> Verdict:
    first = judge(replace(case([replica(by, output)], redundancy=1), auto=True))[0]
    return first


def test_a_revalidation_revises_the_first_verdict() -> None:
    first = _first("x", LIE)
    c = replace(case([replica("x", LIE), replica("a"), replica("b")]), first=first, auto=True)
    outcome = adjudicate(c)
    assert isinstance(outcome, Conclude)
    assert outcome.revision
    assert outcome.verdict.revision == first.revision + 1
    assert outcome.verdict.embeddings == TRUTH
    assert "was wrong and is corrected" in outcome.verdict.reason
    assert outcome.reopen == Reopen(("x",))

    right = adjudicate(replace(c, first=_first("x", TRUTH), replicas=[replica("x"), replica("a")]))
    assert isinstance(right, Conclude)
    assert "stands" in right.verdict.reason


def test_a_revalidation_without_a_verdict_at_its_deadline_keeps_the_first() -> None:
    first = _first("x", TRUTH)
    c = replace(
        case([replica("x")], timed_out=[("asg-a", "a"), ("asg-b", "b")]),
        first=first,
        expired=True,
    )
    outcome = adjudicate(c)
    assert outcome == at_deadline(c)
    assert isinstance(outcome, Conclude)
    assert outcome.keep_first
    assert outcome.unchecked
    assert outcome.verdict == first
    assert outcome.events == (("a", "asg-a", "timed_out"), ("b", "asg-b", "timed_out"))


@given(cases())
def test_at_the_deadline_a_job_always_concludes(c: Case) -> None:
    outcome = adjudicate(replace(c, expired=True))
    assert isinstance(outcome, Conclude)
    assert outcome.verdict.status == ("verified" if majority(c) else "inconclusive")


@pytest.mark.parametrize(
    "replicas",
    [
        pytest.param([replica("a"), replica("b"), replica("liar", LIE)], id="verified"),
        pytest.param([], id="failed"),
        pytest.param([replica("a"), replica("b", LIE)], id="split"),
    ],
)
def test_a_verdict_is_its_jobs_owners(replicas: list[Replica]) -> None:
    owned = replace(case(replicas, timed_out=[("asg-late", "late")]), owner="alice")
    assert judge(owned)[0].owner == "alice"
    probe = replace(owned, replicas=replicas[:1], reference=TRUTH)
    assert judge(probe)[0].owner == "alice"
    assert judge(replace(owned, owner=ANONYMOUS))[0].owner == ANONYMOUS
