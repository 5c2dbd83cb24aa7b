"""Classification, speech-to-text and split jobs through the whole fleet.

Speech is made here with espeak-ng from known sentences, so every transcript is scored
against the words that were spoken.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from cortensor.client import Client
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.classifier import ClassifierRuntime
from cortensor.inference.runtimes.embedding import EmbeddingRuntime
from cortensor.inference.runtimes.whisper import WhisperRuntime
from cortensor.protocol.comparators.transcribe import word_error_rate
from cortensor.schemas import MAX_AUDIO_BYTES, JobRequest, Verdict
from cortensor.settings import Settings
from cortensor.tools.fleet import Fleet
from cortensor.tools.speech import SENTENCES, SHORT, duration_s, long_speech, silence, speak
from tests.conftest import run_cortensor
from tests.e2e.conftest import DISHONEST

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.nats,
    pytest.mark.postgres,
    pytest.mark.models,
]

QUESTIONS = [
    "What is the weather like in Paris tomorrow?",
    "Set a timer for ten minutes.",
    "Translate good morning into Spanish.",
    "I want to speak to a human agent right now.",
    "What does the word ephemeral mean?",
    "Transfer fifty dollars to my savings account.",
    "Play some relaxing music.",
    "What is the meaning of life?",
]


def _audio_job(data: bytes, **fields: Any) -> JobRequest:
    return JobRequest(
        task="transcribe",
        audio=base64.b64encode(data).decode("ascii"),
        redundancy=3,
        deadline_s=240,
        **fields,
    )


def _whisper(settings: Settings) -> WhisperRuntime:
    variant = load_manifest(settings.models_dir).variant_for("whisper-base", "cpu-int8")
    return WhisperRuntime(settings.models_dir / variant.directory, variant.compute_type)


def _words(verdict: Verdict) -> str:
    assert verdict.status == "verified", verdict.reason
    assert verdict.transcript is not None
    return verdict.transcript.text


async def test_short_speech_in_every_format_is_transcribed_within_the_wer_target(
    fleet: tuple[Settings, Fleet], tmp_path: Path
) -> None:
    settings, _ = fleet
    spoken = " ".join(SHORT)
    files = {fmt: speak(spoken, tmp_path / f"short.{fmt}", fmt=fmt) for fmt in ("flac", "mp3")}
    async with Client(settings) as client:
        verdicts = await client.run_many(
            [_audio_job(path.read_bytes()) for path in files.values()], timeout_s=240
        )
    for fmt, verdict in zip(files, verdicts, strict=True):
        assert word_error_rate(spoken, _words(verdict)) <= 0.15, (fmt, verdict.transcript)
        assert verdict.parts == []  # short audio runs whole
        assert DISHONEST not in verdict.agreeing
        assert verdict.transcript is not None
        assert verdict.transcript.language == "en"
        assert verdict.transcript.segments


async def test_long_speech_is_split_across_nodes_and_matches_the_unsplit_transcript(
    fleet: tuple[Settings, Fleet], tmp_path: Path
) -> None:
    settings, _ = fleet
    path = long_speech(SENTENCES, tmp_path / "long.wav")
    length = duration_s(path)
    assert length >= 60
    decided: list[Verdict] = []
    async with Client(settings) as client:
        verdict = await client.run(
            _audio_job(path.read_bytes()), timeout_s=300, on_part=decided.append
        )
    split = _words(verdict)
    parts = verdict.parts
    assert len(parts) == -(-length // settings.chunk_s)  # ceil: one part per chunk
    assert sorted(p.part for p in decided) == [p.part for p in parts]
    assert all(p.status == "verified" and DISHONEST not in p.agreeing for p in parts)
    # The chunks cover the file in order, and more than one node did the work.
    assert parts[0].start_s == 0
    assert all(a.end_s == b.start_s for a, b in itertools.pairwise(parts))
    assert parts[-1].end_s == pytest.approx(length, abs=0.05)
    assert all(len(p.agreeing) >= 2 for p in parts)
    # Every part went to three distinct nodes (the dishonest one, once caught, is rarely
    # chosen: routing weighs reputation).
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        assigned = await conn.fetch(
            """
            SELECT j.part, array_agg(DISTINCT a.node_id) AS nodes
            FROM jobs j JOIN assignments a USING (job_id)
            WHERE j.parent_id = $1 GROUP BY j.part ORDER BY j.part
            """,
            verdict.job_id,
        )
    finally:
        await conn.close()
    assert len(assigned) == len(parts)
    assert all(len(row["nodes"]) >= 3 for row in assigned)
    segments = verdict.transcript.segments if verdict.transcript else []
    assert [s.start for s in segments] == sorted(s.start for s in segments)
    assert segments[-1].end > parts[-1].start_s

    unsplit = await asyncio.to_thread(_whisper(settings).transcribe, path.read_bytes(), None)
    assert word_error_rate(unsplit.text, split) <= 0.05
    assert word_error_rate(" ".join(SENTENCES), split) <= 0.15


async def test_classification_agrees_across_replicas_and_matches_a_direct_call(
    fleet: tuple[Settings, Fleet],
) -> None:
    settings, _ = fleet
    job = JobRequest(task="classify", inputs=QUESTIONS, top_k=3, redundancy=3, deadline_s=60)
    async with Client(settings) as client:
        verdict = await client.run(job, timeout_s=90)
    assert verdict.status == "verified", verdict.reason
    assert verdict.classes is not None
    assert all(len(c.top) == 3 and c.top[0].label == c.label for c in verdict.classes)

    manifest = load_manifest(settings.models_dir)
    embedder = EmbeddingRuntime.from_manifest(
        settings.models_dir, manifest.variant_for("all-MiniLM-L6-v2", "cpu-int8")
    )
    head = manifest.variant_for("rag-intent-classifier", "cpu-int8")
    direct = ClassifierRuntime(embedder, settings.models_dir / head.entry).classify(QUESTIONS, 3)
    assert [c.label for c in verdict.classes] == [c.label for c in direct]

    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT node_id, output::text FROM results WHERE job_id = $1", job.job_id
        )
    finally:
        await conn.close()
    honest = [json.loads(r["output"]) for r in rows if r["node_id"] != DISHONEST]
    assert len(honest) >= 2
    for replica in honest:
        assert [c["label"] for c in replica] == [c.label for c in verdict.classes]


async def test_many_texts_are_sharded_across_nodes_and_stitched_in_order(
    fleet: tuple[Settings, Fleet],
) -> None:
    settings, _ = fleet
    texts = [f"Sentence number {i} is about {QUESTIONS[i % len(QUESTIONS)]}" for i in range(100)]
    async with Client(settings) as client:
        verdict = await client.run(
            JobRequest(inputs=texts, redundancy=3, deadline_s=90), timeout_s=120
        )
    assert verdict.status == "verified", verdict.reason
    shard = settings.shard_inputs
    assert [p.first_input for p in verdict.parts] == list(range(0, len(texts), shard))
    assert sum(p.inputs or 0 for p in verdict.parts) == len(texts)
    reference = EmbeddingRuntime.from_manifest(
        settings.models_dir,
        load_manifest(settings.models_dir).variant_for("all-MiniLM-L6-v2", "cpu-fp32"),
    ).embed(texts)
    got = np.asarray(verdict.embeddings, dtype=np.float32)
    assert got.shape == reference.shape
    assert float(np.min(np.sum(got * reference, axis=1))) >= 0.95


def _raw(**fields: Any) -> bytes:
    body = {"job_id": str(uuid.uuid4()), "schema_version": 1, **fields}
    return json.dumps(body).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def test_bad_audio_and_empty_text_are_rejected_and_the_next_job_passes(
    fleet: tuple[Settings, Fleet], tmp_path: Path
) -> None:
    settings, _ = fleet
    wav = speak(SHORT[0], tmp_path / "ok.wav").read_bytes()
    cases = [
        ("corrupt audio", _raw(task="transcribe", audio=_b64(wav[:44] + bytes(2000) * 3)), ""),
        ("truncated flac", _raw(task="transcribe", audio=_b64(b"fLaC" + bytes(100))), "decoded"),
        ("unsupported format", _raw(task="transcribe", audio=_b64(b"\x89PNG\r\n" + bytes(64))), ""),
        (
            "silence only",
            _raw(task="transcribe", audio=_b64(silence(tmp_path / "quiet.wav", 3).read_bytes())),
            "no speech",
        ),
        (
            "audio over the limit",
            _raw(task="transcribe", audio=_b64(bytes(MAX_AUDIO_BYTES + 1))),
            "over the limit",
        ),
        ("not base64", _raw(task="transcribe", audio="%%%"), "base64"),
        ("empty text", _raw(task="classify", inputs=[""]), "inputs.0"),
        ("no text", _raw(task="classify", inputs=[]), "inputs"),
        ("text job with audio", _raw(task="embed", inputs=["x"], audio=_b64(wav)), "audio"),
    ]
    async with Client(settings) as client:
        for name, body, expected in cases:
            job_id = uuid.UUID(json.loads(body)["job_id"])
            await client.publish_raw(body, message_id=str(job_id))
            verdict = await client.wait(job_id, timeout_s=30)
            assert verdict.status == "rejected", name
            assert expected in verdict.reason, f"{name}: {verdict.reason}"
            assert verdict.reason, name
        good = await client.run(_audio_job(wav), timeout_s=120)
    assert word_error_rate(SHORT[0], _words(good)) <= 0.15


def test_the_cli_classifies_and_transcribes(fleet: tuple[Settings, Fleet], tmp_path: Path) -> None:
    settings, _ = fleet
    labels = run_cortensor(settings, "submit", "classify", *QUESTIONS[:2], "--wait", "--json")
    assert labels.returncode == 0, labels.stderr
    verdict = Verdict.model_validate_json(labels.stdout)
    assert verdict.status == "verified"
    assert len(verdict.classes or []) == 2

    path = speak(SHORT[1], tmp_path / "cli.ogg", fmt="ogg")
    spoken = run_cortensor(settings, "submit", "transcribe", str(path), "--wait", timeout=240)
    assert spoken.returncode == 0, spoken.stderr
    assert "verified" in spoken.stdout
    heard = spoken.stdout.strip().splitlines()[-1]
    assert word_error_rate(SHORT[1], heard) <= 0.15, spoken.stdout

    missing = run_cortensor(settings, "submit", "transcribe", str(tmp_path / "nope.wav"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
