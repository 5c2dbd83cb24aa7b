"""Whisper's batched decoding of audio longer than one window (WhisperRuntime batch_size):
replicas that batch and replicas that do not agree under the transcribe comparator, and
audio of one window or less is decoded the same way whatever the setting (real model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortensor.audio import SAMPLE_RATE, load_audio
from cortensor.catalog import WHISPER_TINY_EN
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.whisper import WINDOW_S, WhisperRuntime, _pieces
from cortensor.protocol.comparators.transcribe import agree, word_error_rate
from cortensor.tools.speech import SENTENCES, long_speech

pytestmark = [pytest.mark.models, pytest.mark.slow]

SPOKEN = SENTENCES[:10]


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Ten sentences with pauses: about 40 s, two windows."""
    return long_speech(SPOKEN, tmp_path_factory.mktemp("batched") / "long.wav").read_bytes()


@pytest.fixture(scope="module")
def runtime(models_dir: Path) -> WhisperRuntime:
    variant = load_manifest(models_dir).variant_for(WHISPER_TINY_EN, "cpu-int8")
    return WhisperRuntime.from_manifest(models_dir, variant, threads=2, batch_size=8)


def test_long_audio_is_cut_into_equal_pieces_of_one_window_at_most(long_wav: bytes) -> None:
    samples = load_audio(long_wav, max_seconds=900)
    pieces = _pieces(samples)
    lengths = [p["end"] - p["start"] for p in pieces]
    assert len(pieces) == 2
    assert max(lengths) <= WINDOW_S
    assert max(lengths) - min(lengths) < 10.0
    assert pieces[0]["start"] == 0.0
    assert pieces[-1]["end"] == pytest.approx(samples.size / SAMPLE_RATE)


def test_batched_and_sequential_replicas_agree(runtime: WhisperRuntime, long_wav: bytes) -> None:
    batched = runtime.transcribe(long_wav, "en")
    sequential = runtime.transcribe(long_wav, "en", batch_size=0)
    assert runtime.transcribe(long_wav, "en") == batched
    assert word_error_rate(" ".join(SPOKEN), batched.text) <= 0.15
    # Two nodes of one precision and build, one batching and one not.
    assert agree(batched.model_dump(), "int8", sequential.model_dump(), "int8")
    assert batched.segments[-1].end <= batched.duration_s + 0.01


def test_one_window_of_audio_is_decoded_alike_whatever_the_batch_size(
    runtime: WhisperRuntime, tmp_path: Path
) -> None:
    short = long_speech(SPOKEN[:3], tmp_path / "short.wav").read_bytes()
    assert runtime.transcribe(short, "en") == runtime.transcribe(short, "en", batch_size=0)


def test_a_negative_batch_size_is_refused(models_dir: Path) -> None:
    variant = load_manifest(models_dir).variant_for(WHISPER_TINY_EN, "cpu-int8")
    with pytest.raises(ValueError, match="batch_size"):
        WhisperRuntime.from_manifest(models_dir, variant, batch_size=-1)
