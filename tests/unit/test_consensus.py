"""Consensus: the strict majority of the replicas a job asked for decides what is true."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cortensor.protocol.comparators import embed
from cortensor.protocol.consensus import Replica, decide, largest_cluster

TRUTH = [[0.6, 0.8], [1.0, 0.0]]
LIE = [[0.8, -0.6], [0.0, 1.0]]  # orthogonal to the truth, row by row
OTHER_LIE = [[-0.6, -0.8], [-1.0, 0.0]]  # opposite to the truth, orthogonal to LIE


def replica(
    node_id: str, output: Any = TRUTH, *, precision: str = "fp32", error: str | None = None
) -> Replica:
    return Replica(
        node_id=node_id,
        result_id=str(uuid.uuid4()),
        precision=precision,
        output=output,
        error=error,
        assignment_id=f"asg-{node_id}",
    )


def test_three_of_three_agreeing_verify() -> None:
    replicas = [replica("a"), replica("b"), replica("c", precision="int8")]
    d = decide(replicas, 3, embed.agree)
    assert d.status == "verified"
    assert d.canonical is replicas[0]
    assert d.agreeing == ("a", "b", "c")
    assert d.disagreeing == ()
    assert d.reason == "3 of 3 replicas agree"


def test_two_of_three_with_one_liar_verify_and_blame_the_liar() -> None:
    replicas = [replica("honest1"), replica("liar", LIE), replica("honest2")]
    d = decide(replicas, 3, embed.agree)
    assert d.status == "verified"
    assert d.canonical is not None
    assert d.canonical.output == TRUTH
    assert set(d.agreeing) == {"honest1", "honest2"}
    assert d.disagreeing == ("liar",)
    assert d.reason == "2 of 3 replicas agree"


def test_liar_first_does_not_change_the_outcome() -> None:
    replicas = [replica("liar", LIE), replica("honest1"), replica("honest2")]
    d = decide(replicas, 3, embed.agree)
    assert d.status == "verified"
    assert d.canonical is replicas[1]
    assert d.disagreeing == ("liar",)


def test_one_of_three_arrived_is_inconclusive_and_blames_nobody() -> None:
    d = decide([replica("a")], 3, embed.agree)
    assert d.status == "inconclusive"
    assert d.canonical is None
    assert d.agreeing == ()
    assert d.disagreeing == ()
    assert "1 of 3" in d.reason
    assert "2 needed" in d.reason


def test_three_different_answers_are_inconclusive() -> None:
    replicas = [replica("a"), replica("b", LIE), replica("c", OTHER_LIE)]
    d = decide(replicas, 3, embed.agree)
    assert d.status == "inconclusive"
    assert d.canonical is None
    assert (d.agreeing, d.disagreeing) == ((), ())


def test_two_colluding_liars_outvote_one_honest_node() -> None:
    # The limit of a majority vote: if the dishonest replicas agree with each other and
    # are the majority, their answer is taken and the honest node is blamed.
    replicas = [replica("honest"), replica("liar1", LIE), replica("liar2", LIE)]
    d = decide(replicas, 3, embed.agree)
    assert d.status == "verified"
    assert d.canonical is not None
    assert d.canonical.output == LIE
    assert set(d.agreeing) == {"liar1", "liar2"}
    assert d.disagreeing == ("honest",)


def test_k_equal_one_verifies_the_single_result() -> None:
    only = replica("solo")
    d = decide([only], 1, embed.agree)
    assert d.status == "verified"
    assert d.canonical is only
    assert d.agreeing == ("solo",)
    assert d.disagreeing == ()


def test_k_equal_one_with_an_error_is_inconclusive() -> None:
    d = decide([replica("solo", None, error="model crashed")], 1, embed.agree)
    assert d.status == "inconclusive"
    assert d.canonical is None


def test_errored_replicas_never_join_a_cluster() -> None:
    # The errored replica carries the true output, yet must not count towards it.
    replicas = [replica("ok"), replica("broken", TRUTH, error="oom"), replica("liar", LIE)]
    assert [r.node_id for r in largest_cluster(replicas, embed.agree)] == ["ok"]
    d = decide(replicas, 3, embed.agree)
    assert d.status == "inconclusive"


def test_errored_replica_is_blamed_when_the_others_verify() -> None:
    replicas = [replica("a"), replica("broken", None, error="timeout in runtime"), replica("b")]
    d = decide(replicas, 3, embed.agree)
    assert d.status == "verified"
    assert set(d.agreeing) == {"a", "b"}
    assert d.disagreeing == ("broken",)


def test_all_errors_are_inconclusive() -> None:
    replicas = [replica(n, None, error="boom") for n in ("a", "b", "c")]
    assert largest_cluster(replicas, embed.agree) == []
    d = decide(replicas, 3, embed.agree)
    assert d.status == "inconclusive"
    assert d.canonical is None
    assert "0 of 3" in d.reason


def test_no_replicas_is_inconclusive() -> None:
    d = decide([], 3, embed.agree)
    assert d.status == "inconclusive"
    assert d.canonical is None


def test_majority_counts_against_requested_redundancy_not_arrivals() -> None:
    # Two agreeing replicas of five requested are not a majority of five.
    d = decide([replica("a"), replica("b")], 5, embed.agree)
    assert d.status == "inconclusive"
    assert "3 needed" in d.reason
    d = decide([replica("a"), replica("b"), replica("c")], 5, embed.agree)
    assert d.status == "verified"


def test_two_of_four_is_not_a_strict_majority() -> None:
    replicas = [replica("a"), replica("b"), replica("c", LIE), replica("d", LIE)]
    d = decide(replicas, 4, embed.agree)
    assert d.status == "inconclusive"


def test_tie_between_clusters_goes_to_the_earliest_centre() -> None:
    replicas = [replica("l1", LIE), replica("t1"), replica("l2", LIE), replica("t2")]
    cluster = largest_cluster(replicas, embed.agree)
    assert [r.node_id for r in cluster] == ["l1", "l2"]


# -- properties over abstract answers ---------------------------------------------------
# Outputs are small integers standing for answers; equal numbers agree.


def same_answer(a: Any, _pa: str, b: Any, _pb: str) -> bool:
    return bool(a == b)


_OUTCOMES = st.lists(
    st.one_of(st.integers(0, 2), st.none()),  # None: the replica errored
    max_size=7,
)


def replicas_of(outcomes: list[int | None]) -> list[Replica]:
    return [
        replica(f"n{i}", output, error="failed" if output is None else None)
        for i, output in enumerate(outcomes)
    ]


@given(outcomes=_OUTCOMES, k=st.integers(1, 7))
def test_verified_means_a_strict_majority_of_k(outcomes: list[int | None], k: int) -> None:
    replicas = replicas_of(outcomes)
    d = decide(replicas, k, same_answer)
    arrived = [r.node_id for r in replicas]
    if d.status == "verified":
        assert d.canonical is not None
        assert d.canonical.error is None
        assert len(d.agreeing) >= k // 2 + 1
        # agreeing and disagreeing partition the arrived replicas
        assert set(d.agreeing).isdisjoint(d.disagreeing)
        assert sorted(d.agreeing + d.disagreeing) == sorted(arrived)
        assert d.canonical.node_id in d.agreeing
        # every agreeing replica gave the canonical answer and did not error
        by_id = {r.node_id: r for r in replicas}
        assert all(by_id[n].output == d.canonical.output for n in d.agreeing)
        assert all(by_id[n].error is None for n in d.agreeing)
    else:
        assert d.canonical is None
        assert (d.agreeing, d.disagreeing) == ((), ())


@given(outcomes=_OUTCOMES, k=st.integers(1, 7))
def test_verified_exactly_when_some_answer_has_a_majority(
    outcomes: list[int | None], k: int
) -> None:
    counts = [outcomes.count(answer) for answer in (0, 1, 2)]
    d = decide(replicas_of(outcomes), k, same_answer)
    assert (d.status == "verified") == (max(counts) >= k // 2 + 1)
    if d.status == "verified":
        assert d.canonical is not None
        assert outcomes.count(d.canonical.output) == max(counts)
