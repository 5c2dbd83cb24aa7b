"""Splitting a job into parts and stitching the parts' verdicts back into the job's."""

from __future__ import annotations

import base64
import math
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.audio import Chunk
from cortensor.protocol.parts import DecidedPart, part_id, split_job, stitch, stitch_transcripts
from cortensor.protocol.replication import REPLICAS
from cortensor.protocol.units import OpenJob, job_params
from cortensor.schemas import JobRequest, JobStatus, PartVerdict, Verdict

DEADLINE = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
FAKE_WAV = b"RIFF\x24\x00\x00\x00WAVEfmt "


def text_job(texts: int, **fields: Any) -> JobRequest:
    return JobRequest(inputs=[f"sentence {i}" for i in range(texts)], **fields)


def audio_job(**fields: Any) -> JobRequest:
    audio = base64.b64encode(FAKE_WAV * 4).decode("ascii")
    return JobRequest(task="transcribe", audio=audio, **fields)


def chunks(count: int, length_s: float = 25.0) -> list[Chunk]:
    return [
        Chunk(index=i, start_s=i * length_s, end_s=(i + 1) * length_s, wav=FAKE_WAV + bytes([i]))
        for i in range(count)
    ]


def assert_keeps_the_job(unit: OpenJob, job: JobRequest) -> None:
    """Every unit of a job keeps its model, redundancy, hardware, options and deadline."""
    auto = job.redundancy == "auto"
    assert (unit.task, unit.model, unit.redundancy, unit.auto, unit.hw_class) == (
        job.task,
        job.model,
        REPLICAS if auto else job.redundancy,  # an auto job's starting point
        auto,
        job.hw_class,
    )
    assert unit.deadline_at == DEADLINE
    assert unit.taken == frozenset()
    assert unit.attempt == 1
    for key, value in job_params(job).items():
        assert unit.params[key] == value, key


# -- split_job: text jobs -------------------------------------------------------------------


@given(texts=st.integers(1, 80), shard=st.integers(1, 90))
def test_a_text_job_is_cut_into_consecutive_shards(texts: int, shard: int) -> None:
    job = text_job(texts, task="classify", top_k=3, language="de", redundancy=2)

    parent, units = split_job(job, DEADLINE, shard_inputs=shard)

    assert len(units) == math.ceil(texts / shard)
    for unit in units:
        assert_keeps_the_job(unit, job)
        assert 1 <= len(unit.inputs) <= shard
        assert unit.audio is None
    # Consecutive shards, in order, covering every input exactly once.
    assert [text for unit in units for text in unit.inputs] == job.inputs
    if len(units) == 1:
        assert parent is None
        [whole] = units
        assert whole.job_id == job.job_id
        assert (whole.parent_id, whole.part) == (None, None)
        assert "parts" not in whole.params
        return
    assert parent is not None
    assert_keeps_the_job(parent, job)
    assert parent.job_id == job.job_id
    assert parent.inputs == []
    assert parent.audio is None
    assert (parent.parent_id, parent.part) == (None, None)
    assert parent.params == {"top_k": 3, "language": "de", "parts": len(units)}
    first = 0
    for index, unit in enumerate(units):
        assert unit.job_id == part_id(job.job_id, index)
        assert (unit.parent_id, unit.part) == (job.job_id, index)
        assert unit.params == {
            "top_k": 3,
            "language": "de",
            "first_input": first,
            "inputs": len(unit.inputs),
        }
        assert unit.inputs == job.inputs[first : first + len(unit.inputs)]
        first += len(unit.inputs)
    ids = [unit.job_id for unit in units]
    assert len(set(ids)) == len(ids)
    assert job.job_id not in ids


@given(texts=st.integers(2, 40), shard=st.integers(1, 5))
def test_splitting_again_gives_the_same_parts(texts: int, shard: int) -> None:
    job = text_job(texts)

    first = split_job(job, DEADLINE, shard_inputs=shard)
    again = split_job(job, DEADLINE, shard_inputs=shard)

    assert first == again


def test_an_embed_job_of_seven_texts_in_shards_of_three() -> None:
    job = text_job(7)

    parent, units = split_job(job, DEADLINE, shard_inputs=3)

    assert parent is not None
    assert parent.params == {"parts": 3}, "embed jobs carry no top_k"
    assert [u.inputs for u in units] == [job.inputs[0:3], job.inputs[3:6], job.inputs[6:7]]
    assert [(u.params["first_input"], u.params["inputs"]) for u in units] == [
        (0, 3),
        (3, 3),
        (6, 1),
    ]
    assert [u.job_id for u in units] == [uuid.uuid5(job.job_id, f"part-{i}") for i in range(3)]


def test_part_ids_depend_on_the_job_and_the_part() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()

    assert part_id(a, 0) == part_id(a, 0)
    assert len({part_id(a, 0), part_id(a, 1), part_id(b, 0), a, b}) == 5


def test_a_job_within_one_shard_runs_whole_under_its_own_id() -> None:
    job = text_job(4, task="classify", top_k=2)

    parent, [whole] = split_job(job, DEADLINE, shard_inputs=4)

    assert parent is None
    assert whole.job_id == job.job_id
    assert whole.inputs == job.inputs
    assert (whole.parent_id, whole.part, whole.audio) == (None, None, None)
    assert whole.params["top_k"] == 2


@pytest.mark.parametrize("shard", [0, -1])
def test_a_shard_must_hold_a_text(shard: int) -> None:
    with pytest.raises(ValueError, match="shard_inputs"):
        split_job(text_job(3), DEADLINE, shard_inputs=shard)


# -- split_job: transcribe jobs -------------------------------------------------------------


@given(count=st.integers(2, 12))
def test_a_transcribe_job_gets_one_part_per_chunk(count: int) -> None:
    job = audio_job(language="en", model="whisper-tiny.en", redundancy=2)
    cut = chunks(count)

    parent, units = split_job(job, DEADLINE, shard_inputs=1, chunks=cut)

    assert parent is not None
    assert_keeps_the_job(parent, job)
    assert parent.job_id == job.job_id
    assert (parent.inputs, parent.audio) == ([], None)
    assert parent.params == {"language": "en", "parts": count}
    assert len(units) == count
    for index, (unit, chunk) in enumerate(zip(units, cut, strict=True)):
        assert_keeps_the_job(unit, job)
        assert unit.job_id == part_id(job.job_id, index)
        assert (unit.parent_id, unit.part) == (job.job_id, index)
        assert unit.audio == chunk.wav
        assert unit.inputs == []
        assert unit.params == {"language": "en", "start_s": chunk.start_s, "end_s": chunk.end_s}
    assert split_job(job, DEADLINE, shard_inputs=1, chunks=cut) == (parent, units)


def test_a_transcribe_job_of_one_chunk_runs_whole_on_the_chunk() -> None:
    job = audio_job()
    [chunk] = chunks(1)

    parent, [whole] = split_job(job, DEADLINE, shard_inputs=1, chunks=[chunk])

    assert parent is None
    assert_keeps_the_job(whole, job)
    assert whole.job_id == job.job_id
    assert (whole.parent_id, whole.part) == (None, None)
    assert whole.audio == chunk.wav, "nodes receive the 16 kHz chunk, not the original file"
    assert whole.params["start_s"] == chunk.start_s
    assert whole.params["end_s"] == chunk.end_s
    assert "parts" not in whole.params


def test_a_transcribe_job_needs_a_chunk() -> None:
    with pytest.raises(ValueError, match="chunk"):
        split_job(audio_job(), DEADLINE, shard_inputs=1, chunks=[])


# -- stitch ---------------------------------------------------------------------------------

PARENT = uuid.UUID(int=7)
EMBED_MODEL = "all-MiniLM-L6-v2"


def decided(
    part: int,
    output: Any,
    *,
    status: JobStatus = "verified",
    task: str = "embed",
    params: dict[str, Any] | None = None,
    reason: str = "",
    replicas: int = 3,
    timed_out: Sequence[str] = (),
) -> DecidedPart:
    """Part `part`, decided by its own three nodes (named after it)."""
    nodes = [f"p{part}-{i}" for i in range(3)]
    job_id = part_id(PARENT, part)
    agreeing, disagreeing = (nodes[:2], nodes[2:]) if status == "verified" else ([], [])
    verdict = Verdict(
        job_id=job_id,
        status=status,
        reason=reason or ("2 of 3 replicas agree" if status == "verified" else f"it {status}"),
        task=task,
        model=EMBED_MODEL,
        replicas=replicas,
        agreeing=agreeing,
        disagreeing=disagreeing,
        timed_out=list(timed_out),
        parent_id=PARENT,
        part=part,
    )
    return DecidedPart(
        part=part,
        job_id=job_id,
        params=params if params is not None else {"first_input": 2 * part, "inputs": 2},
        verdict=verdict if status != "verified" else verdict.with_output(output),
        output=output if status == "verified" else None,
    )


def vectors(part: int) -> list[list[float]]:
    """Two vectors that say which part they came from."""
    return [[1.0, 0.0, 0.0, float(part)], [0.0, 1.0, float(part), 0.0]]


def classes(part: int) -> list[dict[str, Any]]:
    return [
        {
            "label": f"label-{part}-{i}",
            "score": 0.75,
            "top": [{"label": f"label-{part}-{i}", "score": 0.75}, {"label": "x", "score": 0.25}],
        }
        for i in range(2)
    ]


@given(order=st.integers(1, 8).flatmap(lambda n: st.permutations(range(n))))
def test_verified_parts_stitch_in_part_order(order: list[int]) -> None:
    count = len(order)
    shuffled = [decided(p, vectors(p)) for p in order]

    verdict = stitch(PARENT, "embed", EMBED_MODEL, shuffled)

    assert verdict.status == "verified"
    assert verdict.reason == f"all {count} parts verified"
    assert (verdict.job_id, verdict.task, verdict.model) == (PARENT, "embed", EMBED_MODEL)
    assert (verdict.parent_id, verdict.part, verdict.canonical_result_id) == (None, None, None)
    assert verdict.embeddings == [v for p in range(count) for v in vectors(p)]
    assert verdict.output() == verdict.embeddings
    assert verdict.replicas == 3 * count
    assert verdict.agreeing == [f"p{p}-{i}" for p in range(count) for i in range(2)]
    assert verdict.disagreeing == [f"p{p}-2" for p in range(count)]
    assert verdict.parts == [
        PartVerdict(
            part=p,
            job_id=part_id(PARENT, p),
            status="verified",
            reason="2 of 3 replicas agree",
            first_input=2 * p,
            inputs=2,
            agreeing=[f"p{p}-0", f"p{p}-1"],
            disagreeing=[f"p{p}-2"],
        )
        for p in range(count)
    ]
    assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict


def test_classify_parts_stitch_their_items_in_order() -> None:
    parts = [decided(p, classes(p), task="classify") for p in (2, 0, 1)]

    verdict = stitch(PARENT, "classify", "rag-intent-classifier", parts)

    assert verdict.status == "verified"
    assert verdict.output() == classes(0) + classes(1) + classes(2)
    assert [c.label for c in verdict.classes or []] == [
        f"label-{p}-{i}" for p in range(3) for i in range(2)
    ]
    assert [p.part for p in verdict.parts] == [0, 1, 2]


def test_a_node_in_several_parts_is_named_once() -> None:
    first = decided(0, vectors(0))
    second = decided(1, vectors(1))
    shared = second.verdict.model_copy(update={"agreeing": ["p0-0", "p1-1"]})

    verdict = stitch(
        PARENT,
        "embed",
        EMBED_MODEL,
        [first, DecidedPart(1, second.job_id, second.params, shared, second.output)],
    )

    assert verdict.agreeing == ["p0-0", "p0-1", "p1-1"]
    assert verdict.parts[1].agreeing == ["p0-0", "p1-1"]


@pytest.mark.parametrize(
    ("bad", "worst"),
    [
        (["failed"], "failed"),
        (["inconclusive"], "inconclusive"),
        (["rejected"], "rejected"),
        (["inconclusive", "failed"], "failed"),
        (["failed", "rejected"], "rejected"),
        (["inconclusive", "rejected", "failed"], "rejected"),
    ],
)
def test_the_parent_takes_its_worst_part_status(bad: list[JobStatus], worst: JobStatus) -> None:
    statuses: list[JobStatus] = ["verified", *bad, "verified"]
    parts = [
        decided(p, vectors(p), status=s, reason=f"part {p} says {s}")
        for p, s in enumerate(statuses)
    ]
    random.Random(len(bad)).shuffle(parts)

    verdict = stitch(PARENT, "embed", EMBED_MODEL, parts)

    assert verdict.status == worst
    culprit = statuses.index(worst)
    assert verdict.reason == (
        f"1 of {len(statuses)} parts {worst} (part {culprit}): part {culprit} says {worst}"
    )
    assert verdict.embeddings is None
    assert verdict.output() is None
    assert [p.status for p in verdict.parts] == statuses
    assert verdict.replicas == 3 * len(statuses)


def test_every_part_of_the_worst_status_is_named() -> None:
    parts = [
        decided(0, None, status="failed", reason="no node returned a result", timed_out=["t0"]),
        decided(1, vectors(1)),
        decided(2, None, status="failed", reason="later", timed_out=["t2"]),
        decided(3, None, status="inconclusive"),
    ]

    verdict = stitch(PARENT, "embed", EMBED_MODEL, parts)

    assert verdict.status == "failed"
    assert verdict.reason == "2 of 4 parts failed (part 0, 2): no node returned a result"
    assert verdict.timed_out == ["t0", "t2"]


@given(
    statuses=st.lists(
        st.sampled_from(["verified", "rejected", "failed", "inconclusive"]), min_size=1, max_size=6
    )
)
def test_the_parent_is_verified_only_when_every_part_is(statuses: list[JobStatus]) -> None:
    parts = [decided(p, vectors(p), status=s) for p, s in enumerate(statuses)]

    verdict = stitch(PARENT, "embed", EMBED_MODEL, parts)

    rank = ["rejected", "failed", "inconclusive", "verified"]
    assert verdict.status == min(statuses, key=rank.index)
    assert (verdict.embeddings is not None) == (verdict.status == "verified")
    assert len(verdict.parts) == len(statuses)


# -- transcripts ----------------------------------------------------------------------------


def transcript(
    text: str, language: str, duration_s: float, *segments: tuple[float, float, str]
) -> dict[str, Any]:
    return {
        "text": text,
        "language": language,
        "duration_s": duration_s,
        "segments": [{"start": s, "end": e, "text": t} for s, e, t in segments],
    }


def test_transcript_parts_stitch_on_the_original_timeline() -> None:
    spans = [(0.0, 24.5), (24.5, 51.25), (51.25, 60.0)]
    outputs = [
        transcript(" Hello there.", "en", 24.5, (0.0, 2.0, " Hello"), (2.5, 4.0, " there.")),
        transcript("General Kenobi. ", "en", 26.75, (1.0, 3.5, " General Kenobi.")),
        transcript("", "de", 8.75),
    ]
    parts = [
        decided(p, out, task="transcribe", params={"start_s": s, "end_s": e})
        for p, ((s, e), out) in enumerate(zip(spans, outputs, strict=True))
    ]

    verdict = stitch(PARENT, "transcribe", "whisper-base", parts[::-1])

    assert verdict.status == "verified"
    assert verdict.output() == {
        "text": "Hello there. General Kenobi.",
        "language": "en",
        "duration_s": 60.0,
        "segments": [
            {"start": 0.0, "end": 2.0, "text": " Hello"},
            {"start": 2.5, "end": 4.0, "text": " there."},
            {"start": 25.5, "end": 28.0, "text": " General Kenobi."},
        ],
    }
    assert [(p.start_s, p.end_s) for p in verdict.parts] == spans
    assert [(p.first_input, p.inputs) for p in verdict.parts] == [(None, None)] * 3


@pytest.mark.parametrize(
    ("heard", "language"),
    [
        (["fr", "en", "en"], "en"),
        (["fr", "en"], "fr"),
        (["en", "fr", "de", "fr", "de"], "fr"),
        (["de"], "de"),
    ],
)
def test_the_stitched_language_is_the_majority_then_the_first(
    heard: list[str], language: str
) -> None:
    parts = [(10.0 * i, transcript(f"t{i}", lang, 10.0)) for i, lang in enumerate(heard)]

    assert stitch_transcripts(parts)["language"] == language


def test_segment_times_are_shifted_and_rounded() -> None:
    stitched = stitch_transcripts(
        [
            (0.0, transcript("a", "en", 29.97, (0.0, 29.97, "a"))),
            (29.97, transcript("b", "en", 1.111, (0.1, 1.111, "b"))),
        ]
    )

    assert stitched["segments"] == [
        {"start": 0.0, "end": 29.97, "text": "a"},
        {"start": 30.07, "end": 31.08, "text": "b"},
    ]
    assert stitched["duration_s"] == 31.08
    assert stitched["text"] == "a b"


def test_no_transcripts_stitch_to_an_empty_one() -> None:
    assert stitch_transcripts([]) == {
        "text": "",
        "language": "",
        "duration_s": 0.0,
        "segments": [],
    }


@given(texts=st.integers(1, 40), shard=st.integers(1, 50))
def test_every_unit_and_the_parent_are_the_owners(texts: int, shard: int) -> None:
    parent, units = split_job(text_job(texts), DEADLINE, shard_inputs=shard, owner="alice")
    assert {u.owner for u in [*units, *([parent] if parent else [])]} == {"alice"}
    _, spoken = split_job(audio_job(), DEADLINE, shard_inputs=1, chunks=chunks(3), owner="bob")
    assert {u.owner for u in spoken} == {"bob"}


def test_a_stitched_verdict_is_the_owners() -> None:
    parts = [decided(p, vectors(p)) for p in range(2)]
    assert stitch(PARENT, "embed", EMBED_MODEL, parts, owner="alice").owner == "alice"
    failing = [decided(0, None, status="failed"), decided(1, vectors(1))]
    assert stitch(PARENT, "embed", EMBED_MODEL, failing, owner="alice").owner == "alice"
