"""Reading and cutting real audio files, spoken by espeak-ng and converted by sox."""

from __future__ import annotations

import io
import struct
import wave
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortensor.audio import (
    SAMPLE_RATE,
    Chunk,
    cut,
    encode_wav,
    load_audio,
    sniff_format,
    speech_spans,
)
from cortensor.errors import BadInput
from cortensor.protocol.parts import stitch_transcripts
from cortensor.tools.speech import (
    FORMATS,
    SENTENCES,
    SHORT,
    ToolMissing,
    duration_s,
    long_speech,
    silence,
    speak,
)

LIMIT_S = 600.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module")
def spoken(folder: Path) -> dict[str, bytes]:
    """One sentence in each of the four formats."""
    return {fmt: speak(SHORT[0], folder / f"one.{fmt}", fmt=fmt).read_bytes() for fmt in FORMATS}


@pytest.fixture(scope="module")
def long_file(folder: Path) -> Path:
    """About 70 s: eighteen sentences with 0.6 s pauses between them."""
    return long_speech(SENTENCES[:18], folder / "long.wav", pause_s=0.6)


@pytest.fixture(scope="module")
def long_chunks(long_file: Path) -> list[Chunk]:
    return cut(long_file.read_bytes(), chunk_s=30.0, max_seconds=LIMIT_S)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_decodes_to_16_khz_mono(spoken: dict[str, bytes], fmt: str) -> None:
    data = spoken[fmt]
    assert sniff_format(data) == fmt
    samples = load_audio(data, max_seconds=LIMIT_S)
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    # about the 3.2 s that espeak-ng speaks (MP3 adds an encoder delay and padding)
    assert 3.0 < samples.size / SAMPLE_RATE < 3.5
    assert np.all(np.isfinite(samples))
    assert 0.3 < float(np.max(np.abs(samples))) <= 1.0
    spans = speech_spans(samples)
    assert len(spans) == 1
    assert spans[0][1] - spans[0][0] > 2.5


def test_the_formats_decode_to_the_same_sound(spoken: dict[str, bytes]) -> None:
    wav = load_audio(spoken["wav"], max_seconds=LIMIT_S)
    # FLAC is lossless: the same samples, up to the dither sox adds on each conversion.
    flac = load_audio(spoken["flac"], max_seconds=LIMIT_S)
    np.testing.assert_allclose(flac, wav, rtol=0, atol=3 / 32768)
    ogg = load_audio(spoken["ogg"], max_seconds=LIMIT_S)
    assert ogg.size == wav.size
    assert float(np.corrcoef(ogg, wav)[0, 1]) > 0.9


def test_stereo_and_other_rates_are_mixed_down_and_resampled(folder: Path) -> None:
    mono = speak(SHORT[1], folder / "rate.wav")
    source = load_audio(mono.read_bytes(), max_seconds=LIMIT_S)
    stereo = np.repeat(np.round(source * 32767).astype("<i2")[::2, None], 2, axis=1)  # 8 kHz
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(stereo.tobytes())
    samples = load_audio(buffer.getvalue(), max_seconds=LIMIT_S)
    assert abs(samples.size - source.size) <= 2
    assert len(speech_spans(samples)) == 1


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keep", [12, 30])
def test_a_file_cut_inside_its_header_is_bad_input(
    spoken: dict[str, bytes], fmt: str, keep: int
) -> None:
    with pytest.raises(BadInput, match=r"not a WAV|could not be decoded|no audio samples"):
        load_audio(spoken[fmt][:keep], max_seconds=LIMIT_S)


def test_a_file_cut_short_decodes_what_is_there(spoken: dict[str, bytes]) -> None:
    whole = load_audio(spoken["wav"], max_seconds=LIMIT_S)
    half = load_audio(spoken["wav"][: len(spoken["wav"]) // 2], max_seconds=LIMIT_S)
    assert 0.45 < half.size / whole.size < 0.55
    np.testing.assert_array_equal(half, whole[: half.size])


@pytest.mark.parametrize(
    ("fmt", "start", "stop"),
    [
        ("wav", 20, 36),  # the fmt chunk: codec, channels, rate
        ("flac", 8, 42),  # STREAMINFO
        ("ogg", 4, 60),  # the first page header and codec id
    ],
)
def test_a_damaged_header_is_bad_input(
    spoken: dict[str, bytes], fmt: str, start: int, stop: int
) -> None:
    damaged = bytearray(spoken[fmt])
    for i in range(start, stop):
        damaged[i] ^= 0xFF
    assert sniff_format(bytes(damaged)) == fmt  # the magic bytes survive
    with pytest.raises(BadInput, match=f"could not be decoded as {fmt}|sample rate"):
        load_audio(bytes(damaged), max_seconds=LIMIT_S)


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(100), r"89 50 4e 47", id="png"),
        pytest.param(b"this is a transcript, not audio", "looks like text", id="text"),
        pytest.param(b"UklGRiQAAABXQVZFZm10IBAAAAABAAEA", "base64-encoded twice", id="base64"),
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"\xff\xf1\x50\x80" + bytes(200), r"ff f1 50 80", id="aac"),
    ],
)
def test_an_unsupported_format_is_bad_input_that_says_what_to_send(data: bytes, hint: str) -> None:
    with pytest.raises(BadInput, match="WAV, FLAC, MP3 or OGG") as caught:
        load_audio(data, max_seconds=LIMIT_S)
    assert hint in str(caught.value)


def test_audio_over_the_limit_is_bad_input_with_duration_and_limit(
    spoken: dict[str, bytes],
) -> None:
    with pytest.raises(BadInput, match=r"about 3\.2 s, more than the limit of 2 s"):
        load_audio(spoken["flac"], max_seconds=2.0)


def test_a_wav_without_samples_is_bad_input() -> None:
    with pytest.raises(BadInput, match="holds no audio samples"):
        load_audio(encode_wav(np.zeros(0, dtype=np.float32)), max_seconds=LIMIT_S)


def test_an_absurd_sample_rate_is_bad_input() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(50)
        out.writeframes(bytes(2000))
    with pytest.raises(BadInput, match="sample rate is 50 Hz"):
        load_audio(buffer.getvalue(), max_seconds=LIMIT_S)


def riff(tag: int, *, rate: int, channels: int, bits: int, data: bytes) -> bytes:
    """A WAV file with any header fields, valid or not."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_float_and_24_bit_wavs_decode() -> None:
    tone = (0.5 * np.sin(np.arange(SAMPLE_RATE) / 10)).astype("<f4")
    floats = riff(3, rate=SAMPLE_RATE, channels=1, bits=32, data=tone.tobytes())
    np.testing.assert_allclose(load_audio(floats, max_seconds=LIMIT_S), tone, atol=1 / 32768)
    deep = riff(1, rate=48000, channels=2, bits=24, data=bytes(48000 * 2 * 3))
    assert load_audio(deep, max_seconds=LIMIT_S).size == SAMPLE_RATE


def test_a_wav_of_an_unknown_codec_is_bad_input() -> None:
    data = riff(0x1234, rate=SAMPLE_RATE, channels=1, bits=16, data=bytes(3200))
    with pytest.raises(BadInput, match="audio codec is unknown"):
        load_audio(data, max_seconds=LIMIT_S)


def test_silence_only_is_bad_input_no_speech(folder: Path) -> None:
    quiet = silence(folder / "quiet.flac", 5.0, fmt="flac").read_bytes()
    assert load_audio(quiet, max_seconds=LIMIT_S).size == 5 * SAMPLE_RATE
    with pytest.raises(BadInput, match=r"no speech found in the audio \(silence only\?\)"):
        cut(quiet, chunk_s=30.0, max_seconds=LIMIT_S)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_short_file_is_one_chunk_of_16_khz_mono_wav(spoken: dict[str, bytes], fmt: str) -> None:
    chunks = cut(spoken[fmt], chunk_s=30.0, max_seconds=LIMIT_S)
    assert len(chunks) == 1
    (chunk,) = chunks
    samples = load_audio(spoken[fmt], max_seconds=LIMIT_S)
    assert (chunk.index, chunk.start_s, chunk.end_s) == (0, 0.0, samples.size / SAMPLE_RATE)
    with wave.open(io.BytesIO(chunk.wav)) as read:
        assert (read.getnchannels(), read.getsampwidth(), read.getframerate()) == (1, 2, 16000)
        assert read.getnframes() == samples.size


def test_seventy_seconds_cut_in_chunks_of_thirty_gives_three(
    long_file: Path, long_chunks: list[Chunk]
) -> None:
    total = duration_s(long_file)
    assert 65.0 < total < 75.0
    assert [c.index for c in long_chunks] == [0, 1, 2]
    assert long_chunks[0].start_s == 0.0
    assert long_chunks[-1].end_s == pytest.approx(total, abs=1e-3)
    for a, b in pairwise(long_chunks):
        assert a.end_s == b.start_s
    for chunk in long_chunks:
        assert 10.0 < chunk.end_s - chunk.start_s <= 30.0


def test_the_cuts_fall_in_pauses(long_file: Path, long_chunks: list[Chunk]) -> None:
    samples = load_audio(long_file.read_bytes(), max_seconds=LIMIT_S)
    spans = speech_spans(samples)
    assert len(spans) == 18  # one span per sentence
    for chunk in long_chunks[1:]:
        cut_at = chunk.start_s
        assert not any(start < cut_at < end for start, end in spans)
        # The ground truth: sox's pauses are digital silence, 0.1 s either side of the cut.
        around = samples[int((cut_at - 0.1) * SAMPLE_RATE) : int((cut_at + 0.1) * SAMPLE_RATE)]
        assert float(np.max(np.abs(around))) < 0.01


def test_the_chunks_decode_back_to_their_lengths_and_samples(
    long_file: Path, long_chunks: list[Chunk]
) -> None:
    samples = load_audio(long_file.read_bytes(), max_seconds=LIMIT_S)
    for chunk in long_chunks:
        assert sniff_format(chunk.wav) == "wav"
        back = load_audio(chunk.wav, max_seconds=LIMIT_S)
        first = round(chunk.start_s * SAMPLE_RATE)
        assert back.size == round((chunk.end_s - chunk.start_s) * SAMPLE_RATE)
        np.testing.assert_array_equal(back, samples[first : first + back.size])
        assert len(speech_spans(back)) >= 4  # whole sentences, about six of them


def test_a_long_mp3_is_cut_at_pauses_too(folder: Path) -> None:
    path = long_speech(SENTENCES[:9], folder / "long.mp3", fmt="mp3")
    samples = load_audio(path.read_bytes(), max_seconds=LIMIT_S)
    chunks = cut(path.read_bytes(), chunk_s=15.0, max_seconds=LIMIT_S)
    assert len(chunks) == 3
    for chunk in chunks[1:]:
        around = samples[round((chunk.start_s - 0.1) * SAMPLE_RATE) :][: int(0.2 * SAMPLE_RATE)]
        assert float(np.max(np.abs(around))) < 0.02


def test_a_long_file_over_the_limit_is_refused_before_cutting(long_file: Path) -> None:
    with pytest.raises(BadInput, match="more than the limit of 60 s"):
        cut(long_file.read_bytes(), chunk_s=30.0, max_seconds=60.0)


def test_stitching_chunk_transcripts_restores_the_original_times(
    long_chunks: list[Chunk],
) -> None:
    # What a node would say about each chunk: one segment per chunk, times in the chunk.
    parts = [
        (
            c.start_s,
            {
                "text": f"part {c.index}",
                "language": "en",
                "duration_s": round(c.end_s - c.start_s, 2),
                "segments": [{"start": 0.5, "end": 2.25, "text": f"part {c.index}"}],
            },
        )
        for c in long_chunks
    ]
    joined = stitch_transcripts(parts)
    assert joined["text"] == "part 0 part 1 part 2"
    assert [s["start"] for s in joined["segments"]] == [
        round(c.start_s + 0.5, 2) for c in long_chunks
    ]
    assert joined["duration_s"] == pytest.approx(long_chunks[-1].end_s, abs=0.011)


# --- nothing but BadInput escapes, whatever the bytes --------------------------------------

_MAGIC = st.sampled_from(
    [b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3\x03\x00", b"\xff\xfb", b"\xff\xf3"]
)


def _decodes_or_refuses(data: bytes) -> None:
    """Either samples, or BadInput whose message says what to send instead."""
    try:
        samples = load_audio(data, max_seconds=LIMIT_S)
    except BadInput as e:
        refusal = str(e)
    else:
        assert samples.dtype == np.float32
        assert samples.size > 0
        return
    assert "send" in refusal


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise_anything_but_bad_input(data: bytes) -> None:
    _decodes_or_refuses(data)


@settings(max_examples=200, deadline=None)
@given(magic=_MAGIC, tail=st.binary(max_size=4096))
def test_random_bytes_behind_audio_magic_never_raise_anything_but_bad_input(
    magic: bytes, tail: bytes
) -> None:
    _decodes_or_refuses(magic + tail)


@settings(max_examples=300, deadline=None)
@given(
    tag=st.sampled_from([0, 1, 2, 3, 6, 7, 0x11, 0x55, 0xFFFE]) | st.integers(0, 0xFFFF),
    rate=st.sampled_from([0, 1, 8000, 16000, 44100, 2**31 - 1]) | st.integers(0, 2**32 - 1),
    channels=st.integers(0, 12),
    bits=st.sampled_from([0, 8, 16, 24, 32, 64]) | st.integers(0, 255),
    data=st.binary(max_size=2048),
)
def test_wav_headers_of_any_field_values_never_raise_anything_but_bad_input(
    tag: int, rate: int, channels: int, bits: int, data: bytes
) -> None:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block) % 2**32, block % 2**16, bits)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    _decodes_or_refuses(b"RIFF" + struct.pack("<I", len(body)) + body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(FORMATS),
    edits=st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 255)), max_size=40),
    keep=st.floats(0.0, 1.0),
)
def test_damaged_real_files_are_cut_or_refused_with_bad_input(
    spoken: dict[str, bytes], fmt: str, edits: list[tuple[int, int]], keep: float
) -> None:
    data = bytearray(spoken[fmt])
    for position, value in edits:
        data[position % len(data)] = value
    damaged = bytes(data[: max(1, round(len(data) * keep))])
    try:
        chunks = cut(damaged, chunk_s=1.0, max_seconds=LIMIT_S)
    except BadInput as e:
        refusal = str(e)
    else:
        assert chunks
        assert chunks[0].start_s == 0.0
        assert all(a.end_s == b.start_s for a, b in pairwise(chunks))
        return
    assert "send" in refusal


# --- with a real model: cutting at pauses loses no words --------------------------------


@pytest.mark.models
@pytest.mark.slow
def test_chunks_transcribed_apart_and_stitched_read_as_well_as_the_whole(
    models_dir: Path, long_file: Path, long_chunks: list[Chunk]
) -> None:
    from cortensor.catalog import WHISPER_TINY_EN
    from cortensor.inference.manifest import load_manifest
    from cortensor.inference.runtimes.whisper import WhisperRuntime
    from cortensor.protocol.comparators.transcribe import agree, word_error_rate

    variant = load_manifest(models_dir).variant_for(WHISPER_TINY_EN, "cpu-int8")
    whisper = WhisperRuntime.from_manifest(models_dir, variant, threads=2)
    reference = " ".join(SENTENCES[:18])
    whole = whisper.transcribe(long_file.read_bytes(), None)
    parts = [
        (c.start_s, whisper.transcribe(c.wav, None).model_dump(mode="json")) for c in long_chunks
    ]
    stitched = stitch_transcripts(parts)
    # Measured: 0.11 for both (tiny.en int8 on espeak-ng's voice). A cut through a word
    # would lose it on both sides of the cut.
    assert (
        word_error_rate(reference, stitched["text"])
        <= word_error_rate(reference, whole.text) + 0.03
    )
    assert word_error_rate(reference, stitched["text"]) <= 0.2
    assert agree(stitched, "int8", whole.model_dump(mode="json"), "int8")
    assert stitched["duration_s"] == pytest.approx(whole.duration_s, abs=0.01)
    segments = stitched["segments"]
    assert all(a["start"] <= b["start"] for a, b in pairwise(segments))
    assert segments[-1]["end"] <= stitched["duration_s"] + 0.5


def test_the_speech_helpers_say_how_to_install_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="espeak-ng is not installed; run ops/install"):
        speak("hello", tmp_path / "hello.wav")
    with pytest.raises(ToolMissing, match="sox is not installed; run ops/install"):
        silence(tmp_path / "quiet.wav", 1.0)
