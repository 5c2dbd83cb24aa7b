"""The decisions of dishonest nodes that adapt: what they recognise as a probe, how they
read their own record, and when they cheat. Pure logic; the listening is tested in
tests/integration/test_lookout.py."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from cortensor.protocol.comparators.embed import agree
from cortensor.protocol.replication import MIN_STREAK
from cortensor.schemas import (
    Assignment,
    ChatTurn,
    Classification,
    Generation,
    InferenceResult,
    LabelScore,
    Segment,
    Transcript,
    Verdict,
)
from cortensor.services.node.hostile import (
    ADAPTIVE,
    PROBE_AWARE,
    RESPAWN_AFTER,
    SYBIL,
    TRUST_AFTER,
    WINDOW_S,
    Crew,
    PeerBook,
    Record,
    Tactic,
    decide,
    next_identity,
    with_node_id,
)
from cortensor.services.node.recognition import (
    REPLAY_COSINE,
    Recognition,
    input_key,
    parse_probe_file,
    prepared_inputs,
)

ME = "hostile-1"
DIM = 384


def job(*inputs: str, job_id: int = 1, model: str = "all-MiniLM-L6-v2", **more: Any) -> Assignment:
    return Assignment(
        job_id=uuid.UUID(int=job_id),
        node_id=ME,
        task=more.pop("task", "embed"),
        model=model,
        inputs=list(inputs),
        hw_class="cpu-int8",
        deadline_at=datetime(2030, 1, 1, tzinfo=UTC),
        **more,
    )


def unit(rows: int, seed: int) -> NDArray[np.float32]:
    m = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    out: NDArray[np.float32] = m / np.linalg.norm(m, axis=1, keepdims=True)
    return out


def near(matrix: NDArray[np.float32], cosine: float, seed: int) -> NDArray[np.float32]:
    """Rows at exactly `cosine` from `matrix`'s rows (another precision's answer)."""
    noise = unit(len(matrix), seed)
    noise -= np.sum(noise * matrix, axis=1, keepdims=True) * matrix
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    out: NDArray[np.float32] = (cosine * matrix + np.sqrt(1 - cosine**2) * noise).astype(np.float32)
    return out


def result(job_id: int, node: str = "honest-1", **output: Any) -> InferenceResult:
    return InferenceResult(
        assignment_id=uuid.uuid4(),
        job_id=uuid.UUID(int=job_id),
        node_id=node,
        model="all-MiniLM-L6-v2",
        hw_class="cpu-fp32",
        precision="fp32",
        **output,
    )


def verdict(agreeing: list[str], disagreeing: list[str] = [], replicas: int = 3) -> Verdict:  # noqa: B006
    return Verdict(
        job_id=uuid.uuid4(),
        status="verified",
        agreeing=agreeing,
        disagreeing=disagreeing,
        replicas=replicas,
    )


# --- keys and probe files ----------------------------------------------------------------


def test_input_keys_tell_jobs_apart_and_not_by_where_texts_are_cut() -> None:
    assert input_key("m", ["ab", "c"]) != input_key("m", ["a", "bc"])
    assert input_key("m", ["a"]) != input_key("n", ["a"])
    assert input_key("m", [], "UklGRg==") != input_key("m", [], "UklGRh==")
    assert input_key("m", ["a"]) == input_key("m", ["a"])


PROBES = {
    "source": "x",
    "probes": [
        {"task": "embed", "model": "all-MiniLM-L6-v2", "inputs": ["A probe.", "Another."]},
        {"task": "transcribe", "model": "whisper-base", "audio": "UklGRg=="},
        {"model": 3, "inputs": ["not a probe: the model is no name"]},
        "garbage",
    ],
}


def test_a_probe_file_gives_every_probe_job_and_text() -> None:
    jobs, texts = prepared_inputs(PROBES)
    assert len(jobs) == 2
    assert len(texts) == 2
    assert parse_probe_file(json.dumps(PROBES)) == (jobs, texts)
    assert parse_probe_file("not json") == ([], [])
    assert prepared_inputs([1, 2]) == ([], [])
    assert prepared_inputs({"probes": "none"}) == ([], [])


def test_prepared_probes_are_recognised_by_job_and_by_any_of_their_texts() -> None:
    seen = Recognition(*prepared_inputs(PROBES))
    assert seen.before(job("A probe.", "Another.")) == "a prepared probe"
    assert seen.before(job("Something new.", "Another.")) == "a prepared probe"
    speech = job(task="transcribe", model="whisper-base", audio="UklGRg==")
    assert seen.before(speech) == "a prepared probe"
    assert seen.before(job("Something new.")) is None


def test_a_job_whose_input_was_sent_before_is_recognised() -> None:
    seen = Recognition()
    first = job("Hello there.", "Second text.")
    assert seen.before(first) is None
    seen.remember(first)
    assert seen.before(job("Hello there.", "Second text.", job_id=2)) == "an input sent before"
    assert seen.before(job("Second text.", job_id=3)) == "an input sent before"
    assert seen.before(job("Hello there!", job_id=4)) is None


def test_memory_of_inputs_is_bounded() -> None:
    seen = Recognition(inputs_remembered=3)
    for i in range(5):
        seen.remember(job(f"text {i}"))
    assert seen.before(job("text 0")) is None
    assert seen.before(job("text 4")) == "an input sent before"


# --- answers heard on the results subject ------------------------------------------------------


def test_an_answer_another_job_had_marks_a_re_sent_input() -> None:
    seen = Recognition()
    truth = unit(2, seed=1)
    assert seen.after(job("x", job_id=5), truth) is None, "nothing heard yet"
    seen.overheard(result(job_id=1, embeddings=near(truth, 0.97, seed=2).tolist()))
    assert seen.after(job("x", job_id=5), truth) == "an answer another job already had"
    # ... but not the answer a peer gave to this very job, nor one of another shape
    assert seen.after(job("x", job_id=1), truth) is None
    assert seen.after(job("x", job_id=5), truth[:1]) is None
    assert seen.after(job("x", job_id=5), unit(2, seed=3)) is None


def test_the_replay_tolerance_is_the_comparators_between_precisions() -> None:
    truth = unit(1, seed=4)
    assert REPLAY_COSINE <= 0.95
    seen = Recognition()
    seen.overheard(result(job_id=1, embeddings=near(truth, REPLAY_COSINE + 0.002, 5).tolist()))
    assert agree(near(truth, REPLAY_COSINE + 0.002, 5), "fp32", truth, "int8")
    assert seen.after(job("x", job_id=2), truth) is not None
    other = Recognition()
    other.overheard(result(job_id=1, embeddings=near(truth, REPLAY_COSINE - 0.02, 6).tolist()))
    assert other.after(job("x", job_id=2), truth) is None


@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=30, unique=True))
def test_unrelated_answers_are_never_taken_for_a_replay(seeds: list[int]) -> None:
    seen = Recognition()
    for i, seed in enumerate(seeds):
        seen.overheard(result(job_id=i + 10, embeddings=unit(1, seed).tolist()))
    assert seen.after(job("x", job_id=1), unit(1, seed=2**33)) is None


def test_heard_answers_are_a_ring() -> None:
    seen = Recognition(outputs_remembered=4)
    answers = [unit(1, seed=100 + i) for i in range(6)]
    for i, answer in enumerate(answers):
        seen.overheard(result(job_id=i + 1, embeddings=answer.tolist()))
    assert seen.after(job("x", job_id=99), answers[0]) is None, "forgotten"
    assert seen.after(job("x", job_id=99), answers[1]) is None, "forgotten"
    assert seen.after(job("x", job_id=99), answers[5]) is not None


def classes(*pairs: tuple[str, float]) -> list[Classification]:
    return [Classification(label=a, score=s, top=[LabelScore(label=a, score=s)]) for a, s in pairs]


def transcript(text: str) -> Transcript:
    return Transcript(
        text=text, language="en", duration_s=2.0, segments=[Segment(start=0, end=2, text=text)]
    )


def test_labels_and_transcripts_heard_before_mark_a_re_sent_input() -> None:
    seen = Recognition()
    seen.overheard(result(job_id=1, classes=classes(("timer", 0.81), ("music", 0.6))))
    seen.overheard(result(job_id=2, transcript=transcript("The quick brown fox jumps.")))
    seen.overheard(result(job_id=3, transcript=transcript("Yes.")))
    seen.overheard(result(job_id=4, error="the model failed"))
    asked = job("a", job_id=9)
    assert seen.after(asked, classes(("timer", 0.84), ("music", 0.58))) is not None
    assert seen.after(asked, classes(("timer", 0.70), ("music", 0.6))) is None
    assert seen.after(asked, classes(("timer", 0.81))) is None
    assert seen.after(asked, transcript("the quick brown fox jumps")) is not None
    assert seen.after(asked, transcript("yes")) is None, "too short to tell"
    assert seen.after(asked, transcript("another sentence entirely")) is None
    assert seen.after(asked, "not an answer") is None


def test_generations_heard_before_and_conversations_sent_before_mark_a_probe() -> None:
    seen = Recognition()
    answer = [Generation(text="The capital of France is Paris.", tokens=[1], finish_reason="stop")]
    seen.overheard(result(job_id=1, task="generate", generations=answer))
    asked = job("a", job_id=9, task="generate")
    assert seen.after(asked, answer) is not None
    other = [Generation(text="Bees make honey.", tokens=[2], finish_reason="stop")]
    assert seen.after(asked, other) is None

    chat = [ChatTurn(role="user", content="What is the capital of France?")]
    first = job(job_id=10, task="generate", messages=chat)
    assert seen.before(first) is None
    seen.remember(first)
    assert seen.before(job(job_id=11, task="generate", messages=chat)) == "an input sent before"


# --- the node's own record -----------------------------------------------------------------


def test_the_record_admits_on_a_published_verdict_and_counts_checked_ones() -> None:
    record = Record(ME)
    assert (record.admitted, record.streak) == (False, 0)
    record.observe(verdict(["honest-1", "honest-2"]))
    assert (record.admitted, record.streak) == (False, 0), "not about this node"
    record.observe(verdict([ME], replicas=1))
    assert (record.admitted, record.streak) == (True, 0), "alone: nothing checked it"
    for _ in range(3):
        record.observe(verdict([ME, "honest-1"]))
    assert (record.admitted, record.streak) == (True, 3)
    record.observe(verdict(["honest-1", "honest-2"], [ME]))
    assert (record.admitted, record.streak) == (False, 0), "caught: probes come next"
    record.observe(verdict([ME, "honest-2"]))
    record.observe(Verdict(job_id=uuid.uuid4(), status="verified", agreeing=["h"], timed_out=[ME]))
    assert (record.admitted, record.streak) == (False, 0)


# --- decisions ------------------------------------------------------------------------------


def test_the_tactics() -> None:
    assert PROBE_AWARE.recognise
    assert not PROBE_AWARE.watch_peers
    assert ADAPTIVE.recognise
    assert ADAPTIVE.watch_peers
    assert ADAPTIVE.window_s == WINDOW_S == 0.05
    assert ADAPTIVE.trust_after == 0
    assert TRUST_AFTER == MIN_STREAK
    with pytest.raises(ValueError, match="peer window"):
        Tactic(window_s=-0.1)
    with pytest.raises(ValueError, match="trust and respawn thresholds"):
        Tactic(trust_after=-1)
    with pytest.raises(ValueError, match="trust and respawn thresholds"):
        Tactic(respawn_after=-1)
    assert SYBIL.recognise
    assert not SYBIL.watch_peers
    assert SYBIL.respawn_after == RESPAWN_AFTER == 2


@pytest.mark.parametrize(
    ("tactic", "probe", "admitted", "peer_seen", "streak", "cheat", "why"),
    [
        (PROBE_AWARE, None, True, False, 0, True, "not a probe"),
        (PROBE_AWARE, None, True, True, 0, True, "not a probe"),
        (PROBE_AWARE, "a prepared probe", True, False, 0, False, "probe: a prepared probe"),
        (PROBE_AWARE, None, False, False, 0, False, "probe: not admitted"),
        (ADAPTIVE, None, True, False, 0, True, "alone"),
        (ADAPTIVE, None, True, True, 50, False, "checked"),
        (ADAPTIVE, "an input sent before", True, False, 0, False, "probe"),
        (ADAPTIVE, None, False, False, 0, False, "probe: not admitted"),
        (Tactic(watch_peers=True, trust_after=30), None, True, False, 29, False, "earning"),
        (Tactic(watch_peers=True, trust_after=30), None, True, False, 30, True, "alone"),
        (Tactic(recognise=False, watch_peers=True), "a prepared probe", False, False, 0, True, ""),
    ],
)
def test_decisions(
    tactic: Tactic,
    probe: str | None,
    admitted: bool,
    peer_seen: bool,
    streak: int,
    cheat: bool,
    why: str,
) -> None:
    decision = decide(tactic, probe=probe, admitted=admitted, peer_seen=peer_seen, streak=streak)
    assert decision.cheat is cheat
    assert decision.why.startswith(why)


COORDINATED = Tactic(coordinate=True, respawn_after=RESPAWN_AFTER)


@pytest.mark.parametrize(
    ("probe", "admitted", "peer_seen", "mates", "cheat", "why"),
    [
        (None, True, True, True, True, "majority"),
        (None, True, False, False, False, "outnumbered"),
        (None, True, True, False, False, "outnumbered"),
        ("an input sent before", True, False, True, False, "probe"),
        (None, False, False, True, False, "probe: not admitted"),
    ],
)
def test_a_coordinated_sybil_cheats_only_beside_a_fellow_member(
    probe: str | None, admitted: bool, peer_seen: bool, mates: bool, cheat: bool, why: str
) -> None:
    decision = decide(
        COORDINATED,
        probe=probe,
        admitted=admitted,
        peer_seen=peer_seen,
        streak=0,
        mates=mates,
    )
    assert decision.cheat is cheat
    assert decision.why.startswith(why)


@given(
    recognise=st.booleans(),
    watch=st.booleans(),
    coordinate=st.booleans(),
    mates=st.booleans(),
    trust_after=st.integers(0, 60),
    probe=st.none() | st.sampled_from(["a prepared probe", "an input sent before"]),
    admitted=st.booleans(),
    peer_seen=st.booleans(),
    streak=st.integers(0, 100),
)
def test_a_node_cheats_exactly_when_nothing_it_watches_warns_it(
    recognise: bool,
    watch: bool,
    coordinate: bool,
    mates: bool,
    trust_after: int,
    probe: str | None,
    admitted: bool,
    peer_seen: bool,
    streak: int,
) -> None:
    tactic = Tactic(
        recognise=recognise, watch_peers=watch, trust_after=trust_after, coordinate=coordinate
    )
    decision = decide(
        tactic, probe=probe, admitted=admitted, peer_seen=peer_seen, streak=streak, mates=mates
    )
    warned = (
        (recognise and (probe is not None or not admitted))
        or (watch and peer_seen)
        or streak < trust_after
        or (coordinate and not mates)
    )
    assert decision.cheat is not warned


# --- peers ------------------------------------------------------------------------------------


def test_peers_are_other_nodes_with_a_result_for_the_job() -> None:
    book = PeerBook(limit=2)
    a, b, c = (uuid.UUID(int=i) for i in (1, 2, 3))
    book.saw(a, ME)
    assert not book.peers(a, ME), "its own result is no peer's"
    book.saw(a, "honest-1")
    assert book.peers(a, ME)
    assert not book.peers(b, ME)
    book.saw(b, "honest-2")
    book.saw(c, "honest-3")
    assert not book.peers(a, ME), "forgotten past the limit"
    assert book.peers(c, ME)


# --- sybils -----------------------------------------------------------------------------------


def test_a_sybil_leaves_once_caught_often_enough() -> None:
    record = Record(ME)
    assert not SYBIL.respawns(record)
    record.observe(verdict(["honest-1", "honest-2"], [ME]))
    assert record.failures == 1
    assert not SYBIL.respawns(record), "once may be bad luck"
    record.observe(verdict([ME, "honest-1"]))
    record.observe(verdict(["honest-1", "honest-2"], [ME]))
    assert record.failures == 2
    assert SYBIL.respawns(record)
    assert not ADAPTIVE.respawns(record), "only a sybil leaves"


def test_next_identities() -> None:
    assert next_identity("sybil-a") == "sybil-a-r1"
    assert next_identity("sybil-a-r1") == "sybil-a-r2"
    assert next_identity("sybil-a-r9") == "sybil-a-r10"
    assert next_identity("x" * 64) == "x" * 61 + "-r1"
    assert len(next_identity("y" * 60 + "-r99")) <= 64


@given(st.text(st.sampled_from("abc-_19"), min_size=1, max_size=64))
def test_a_sybil_never_comes_back_under_an_id_it_had(node_id: str) -> None:
    seen = {node_id}
    current = node_id
    for _ in range(12):
        current = next_identity(current)
        assert len(current) <= 64
        assert current not in seen
        seen.add(current)


def test_the_command_line_a_sybil_comes_back_with() -> None:
    argv = ["cortensor", "node", "--fault", "sybil", "--node-id", "s-1", "--fault-group", "g"]
    assert with_node_id(argv, "s-1-r1") == [
        "cortensor", "node", "--fault", "sybil", "--node-id", "s-1-r1", "--fault-group", "g"
    ]  # fmt: skip
    assert with_node_id(["cortensor", "node", "--node-id=s-1"], "n") == [
        "cortensor",
        "node",
        "--node-id=n",
    ]
    assert with_node_id(["cortensor", "node"], "n") == ["cortensor", "node", "--node-id", "n"]


def test_the_crew_knows_who_holds_a_job_and_who_chose_to_answer_truly() -> None:
    crew = Crew(limit=2)
    a, b, c = (uuid.UUID(int=i) for i in (1, 2, 3))
    crew.heard(a, ME, "holding")
    assert not crew.mates(a, ME), "its own word is no mate's"
    crew.heard(a, "sybil-2", "holding")
    assert crew.mates(a, ME)
    crew.heard(a, "sybil-2", "honest")
    assert not crew.mates(a, ME), "the mate answers truly: no majority"
    crew.heard(a, "sybil-2", "holding")
    assert not crew.mates(a, ME), "a late echo does not undo a decision"
    crew.heard(b, "sybil-3", "cheat")
    assert crew.mates(b, ME)
    crew.heard(c, "sybil-3", "holding")
    assert not crew.mates(a, ME), "forgotten past the limit"


def test_a_blind_node_guesses_its_admission_from_its_own_answers() -> None:
    """Kept from the verdicts, a node takes itself for admitted once it answered truly as
    many jobs in a row as admit a node on probation, and starts over after each cheat."""
    from cortensor.protocol.reputation import ADMIT_PROBES
    from cortensor.services.node.hostile import Record

    record = Record("n1")
    for _ in range(ADMIT_PROBES):
        record.answered(cheated=False)
    assert not record.believes_admitted()  # not blind: only verdicts tell it
    record.blind = True
    assert record.believes_admitted()
    record.answered(cheated=True)
    assert not record.believes_admitted()
    for _ in range(ADMIT_PROBES - 1):
        record.answered(cheated=False)
    assert not record.believes_admitted()
    record.answered(cheated=False)
    assert record.believes_admitted()
