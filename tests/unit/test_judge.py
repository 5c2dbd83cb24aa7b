"""The guard's judgement: a verdict and one reputation event per replica."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence

from cortensor.protocol.adjudication import Case, judge, score_late
from cortensor.protocol.consensus import Replica
from cortensor.schemas import Verdict

MODEL = "all-MiniLM-L6-v2"
TRUTH = [[0.6, 0.8], [1.0, 0.0]]
LIE = [[0.8, -0.6], [0.0, 1.0]]


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
