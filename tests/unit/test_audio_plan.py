"""Planning where to cut audio: pure arithmetic on durations and speech spans."""

from __future__ import annotations

import io
import math
import wave
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.audio import (
    SAMPLE_RATE,
    WHISPER_WINDOW_S,
    chunk_count,
    encode_wav,
    plan_chunks,
    sniff_format,
)
from cortensor.protocol.parts import stitch_transcripts

Spans = list[tuple[float, float]]


def gap_middles(spans: Spans) -> list[float]:
    return [(a[1] + b[0]) / 2 for a, b in pairwise(spans)]


def inside_speech(t: float, spans: Spans) -> bool:
    return any(s < t < e for s, e in spans)


def check_shape(plan: Spans, duration: float, chunk_s: float) -> None:
    """Coverage, order, no overlap, the count, and no tiny chunk."""
    n = max(1, math.ceil(duration / chunk_s))
    assert len(plan) == n
    assert plan[0][0] == 0.0
    assert plan[-1][1] == duration
    for (_, end), (start, _) in pairwise(plan):
        assert end == start  # contiguous: no gap, no overlap
    shortest = duration / n / 4
    for start, end in plan:
        assert end - start >= shortest * (1 - 1e-9)
        assert end > start


# Speech as it comes from the VAD: runs of speech separated by pauses.
@st.composite
def speech(draw: st.DrawFn, longest_run: float = 5.0, longest_pause: float = 1.5) -> Spans:
    t = draw(st.floats(0.0, 2.0))
    spans: Spans = []
    for _ in range(draw(st.integers(1, 60))):
        run = draw(st.floats(0.2, longest_run))
        spans.append((t, t + run))
        t += run + draw(st.floats(0.1, longest_pause))
    return spans


def test_a_short_file_is_one_chunk() -> None:
    assert plan_chunks(12.5, [(0.5, 12.0)], 30.0) == [(0.0, 12.5)]
    assert plan_chunks(30.0, [(0.5, 12.0)], 30.0) == [(0.0, 30.0)]


def test_cuts_go_to_the_middle_of_the_pause_nearest_the_ideal_place() -> None:
    # 70 s in chunks of 30: three chunks, ideal cuts at 23.33 and 46.67.
    spans = [(0.0, 10.0), (10.6, 22.0), (23.0, 35.0), (36.0, 46.0), (47.0, 70.0)]
    # pause middles: 10.3, 22.5, 35.5, 46.5
    assert plan_chunks(70.0, spans, 30.0) == [(0.0, 22.5), (22.5, 46.5), (46.5, 70.0)]


def test_without_speech_spans_the_cuts_are_the_ideal_places() -> None:
    plan = plan_chunks(90.0, [], 30.0)
    assert plan == [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0)]
    # one long span gives no pause either
    assert plan_chunks(90.0, [(0.0, 90.0)], 30.0) == plan


def test_a_cut_moves_to_a_pause_within_whispers_window_rather_than_the_nearest() -> None:
    # 70 s in chunks of 25: ideal cuts at 23.33 and 46.67. The pause nearest the first
    # (30.5) would leave a 30.5 s chunk, over Whisper's 30 s window; the one at 15 keeps
    # every chunk within it, with the second cut at 44.
    spans = [(0.0, 14.5), (15.5, 30.0), (31.0, 43.5), (44.5, 70.0)]
    assert plan_chunks(70.0, spans, 25.0) == [(0.0, 15.0), (15.0, 44.0), (44.0, 70.0)]


def test_above_the_window_chunk_s_bounds_the_chunks() -> None:
    # 100 s in chunks of 40: ideal first cut at 33.33; the pause at 34.5 is nearest and
    # gives a 34.5 s chunk, allowed because the caller asked for chunks of 40 s.
    spans = [(0.0, 27.5), (28.5, 34.0), (35.0, 100.0)]
    assert plan_chunks(100.0, spans, 40.0)[0] == (0.0, 34.5)


def test_when_no_pause_keeps_chunks_within_the_window_a_pause_still_beats_speech() -> None:
    # 90 s in chunks of 30 must be cut exactly at 30 and 60 to stay within 30 s; the
    # pauses are a second off, so the cuts go to them and one chunk runs to 31 s.
    spans = [(0.0, 28.5), (29.5, 58.5), (59.5, 90.0)]
    plan = plan_chunks(90.0, spans, 30.0)
    assert plan == [(0.0, 29.0), (29.0, 59.0), (59.0, 90.0)]


def test_a_pause_out_of_reach_is_not_used() -> None:
    # The only pause is at 2 s: using it would leave a 2 s chunk, under a quarter of the
    # ideal 30 s, so the cut stays at its ideal place inside speech.
    plan = plan_chunks(60.0, [(0.0, 1.5), (2.5, 60.0)], 30.0)
    assert plan == [(0.0, 30.0), (30.0, 60.0)]


def test_pauses_before_the_first_and_after_the_last_span_are_not_cut_points() -> None:
    # Leading and trailing silence would give chunks with nothing to transcribe.
    plan = plan_chunks(60.0, [(20.0, 40.0)], 30.0)
    assert plan == [(0.0, 30.0), (30.0, 60.0)]


def test_overlapping_unsorted_and_out_of_range_spans_are_tolerated() -> None:
    spans = [(40.0, 70.0), (-5.0, 10.0), (5.0, 27.0), (31.0, 45.0), (80.0, 90.0), (3.0, 1.0)]
    # merged: (0, 27) and (31, 60); one pause, its middle at 29
    plan = plan_chunks(60.0, spans, 30.0)
    assert plan == [(0.0, 29.0), (29.0, 60.0)]


@pytest.mark.parametrize(
    ("duration", "chunk_s"),
    [(0.0, 30.0), (-1.0, 30.0), (math.nan, 30.0), (math.inf, 30.0), (10.0, 0.0), (10.0, -3.0)],
)
def test_nonsense_durations_are_value_errors(duration: float, chunk_s: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        plan_chunks(duration, [], chunk_s)


@given(
    duration=st.floats(0.01, 3600.0),
    chunk_s=st.floats(0.5, 120.0),
    spans=st.lists(st.tuples(st.floats(-10.0, 4000.0), st.floats(-10.0, 4000.0)), max_size=40),
)
def test_any_spans_give_contiguous_chunks_of_the_right_count(
    duration: float, chunk_s: float, spans: Spans
) -> None:
    if duration / chunk_s > 2000:  # keep the example small
        chunk_s = duration / 2000
    check_shape(plan_chunks(duration, spans, chunk_s), duration, chunk_s)


@given(spans=speech(), tail=st.floats(0.0, 2.0), chunk_s=st.floats(20.0, 90.0))
def test_with_pauses_every_few_seconds_every_cut_is_in_a_pause(
    spans: Spans, tail: float, chunk_s: float
) -> None:
    duration = spans[-1][1] + tail
    plan = plan_chunks(duration, spans, chunk_s)
    check_shape(plan, duration, chunk_s)
    middles = gap_middles(spans)
    for _, cut in plan[:-1]:
        assert cut in middles
        assert not inside_speech(cut, spans)


@given(spans=speech(longest_run=4.0, longest_pause=1.0), chunk_s=st.floats(10.0, 24.0))
def test_with_room_to_spare_every_chunk_fits_whispers_window(spans: Spans, chunk_s: float) -> None:
    duration = spans[-1][1]
    plan = plan_chunks(duration, spans, chunk_s)
    check_shape(plan, duration, chunk_s)
    for start, end in plan:
        assert end - start <= WHISPER_WINDOW_S
    for _, cut in plan[:-1]:
        assert not inside_speech(cut, spans)


@given(spans=speech(), chunk_s=st.floats(5.0, 60.0))
def test_the_plan_is_deterministic(spans: Spans, chunk_s: float) -> None:
    duration = spans[-1][1] + 1.0
    assert plan_chunks(duration, spans, chunk_s) == plan_chunks(duration, spans, chunk_s)


# --- format sniffing, WAV encoding and stitching: small pure helpers ---------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02", "ogg"),
        (b"ID3\x04\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64", "mp3"),  # MPEG-1 layer III
        (b"\xff\xf3\x38\xc4", "mp3"),  # MPEG-2 layer III, as sox writes it
        (b"\xff\xf1\x50\x80", None),  # ADTS AAC: same sync, reserved layer 00
        (b"RIFF\x24\x00\x00\x00AVI LIST", None),
        (b"\x89PNG\r\n\x1a\n", None),
        (b"\xff\xd8\xff\xe0", None),  # JPEG
        (b"hello", None),
        (b"", None),
        (b"\xff", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


@given(st.binary(max_size=64))
def test_sniff_format_never_raises(data: bytes) -> None:
    assert sniff_format(data) in (None, "wav", "flac", "ogg", "mp3")


def test_encode_wav_is_16_bit_16_khz_mono_and_exact_for_pcm_values() -> None:
    pcm = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    data = encode_wav((pcm / 32768.0).astype(np.float32))
    with wave.open(io.BytesIO(data)) as read:
        assert (read.getnchannels(), read.getsampwidth(), read.getframerate()) == (1, 2, 16000)
        back = np.frombuffer(read.readframes(read.getnframes()), dtype="<i2")
    np.testing.assert_array_equal(back, pcm)


def test_encode_wav_clips_and_zeroes_what_is_not_a_sample() -> None:
    data = encode_wav(np.array([2.0, -2.0, np.nan, np.inf], dtype=np.float32))
    with wave.open(io.BytesIO(data)) as read:
        back = np.frombuffer(read.readframes(4), dtype="<i2").tolist()
    assert back == [32767, -32768, 0, 32767]
    assert SAMPLE_RATE == 16000


def transcript(text: str, language: str, duration: float, *segments: tuple[float, float]) -> dict:
    words = text.split()
    return {
        "text": text,
        "language": language,
        "duration_s": duration,
        "segments": [
            {"start": s, "end": e, "text": w} for (s, e), w in zip(segments, words, strict=False)
        ],
    }


def test_stitch_shifts_segments_and_joins_texts() -> None:
    parts = [
        (0.0, transcript(" Hello there.", "en", 22.5, (0.0, 1.2), (1.2, 2.0))),
        (22.5, transcript("", "en", 24.0)),
        (46.5, transcript("General Kenobi. ", "de", 23.49, (0.333, 1.0), (1.0, 23.0))),
    ]
    joined = stitch_transcripts(parts)
    assert joined == {
        "text": "Hello there. General Kenobi.",
        "language": "en",
        "duration_s": 69.99,
        "segments": [
            {"start": 0.0, "end": 1.2, "text": "Hello"},
            {"start": 1.2, "end": 2.0, "text": "there."},
            {"start": 46.83, "end": 47.5, "text": "General"},
            {"start": 47.5, "end": 69.5, "text": "Kenobi."},
        ],
    }


def test_stitch_keeps_segment_times_within_their_chunk() -> None:
    # Whisper stamps a last segment with the end of its 30 s window, past a 20 s chunk.
    late = transcript("one two", "en", 20.0, (-0.2, 5.0), (15.0, 30.0))
    joined = stitch_transcripts([(0.0, transcript("zero", "en", 10.0, (0.0, 9.0))), (10.0, late)])
    assert [(s["start"], s["end"]) for s in joined["segments"]] == [
        (0.0, 9.0),
        (10.0, 15.0),
        (25.0, 30.0),
    ]
    assert joined["duration_s"] == 30.0


def test_stitch_takes_the_first_language_on_a_tie() -> None:
    parts = [(0.0, transcript("a", "fr", 1.0)), (1.0, transcript("b", "en", 1.0))]
    assert stitch_transcripts(parts)["language"] == "fr"
    parts.append((2.0, transcript("c", "en", 1.0)))
    assert stitch_transcripts(parts)["language"] == "en"
    assert stitch_transcripts(parts)["duration_s"] == 3.0


def test_stitch_of_nothing_is_an_empty_transcript() -> None:
    assert stitch_transcripts([]) == {"text": "", "language": "", "duration_s": 0.0, "segments": []}


# --- how many chunks: Whisper's window against the nodes free to share a file ------------


@pytest.mark.parametrize(
    ("duration", "parallel", "expected"),
    [
        (81.0, 1, 3),  # one node at a time: only the 30 s bound counts
        (81.0, 2, 4),  # two nodes: an even share each, chunks of 20 s
        (60.0, 2, 2),
        (25.0, 2, 1),  # two chunks of 12.5 s would be too short to be worth it
        (40.0, 3, 2),  # three of 13.3 s are too short; two of 20 s are not
        (300.0, 4, 12),
        (10.0, 8, 1),
    ],
)
def test_chunk_count_balances_nodes_without_cutting_too_short(
    duration: float, parallel: int, expected: int
) -> None:
    assert chunk_count(duration, chunk_s=30.0, min_chunk_s=15.0, parallel=parallel) == expected


@given(
    duration=st.floats(0.1, 3600.0),
    chunk_s=st.floats(5.0, 120.0),
    ratio=st.floats(0.1, 1.0),
    parallel=st.integers(1, 16),
)
def test_chunk_count_keeps_every_chunk_within_the_bounds(
    duration: float, chunk_s: float, ratio: float, parallel: int
) -> None:
    min_chunk_s = chunk_s * ratio
    n = chunk_count(duration, chunk_s=chunk_s, min_chunk_s=min_chunk_s, parallel=parallel)
    least = math.ceil(duration / chunk_s)
    assert n >= max(1, least)  # never longer than chunk_s
    if parallel == 1:
        assert n == max(1, least)
    elif n > least:
        # Extra chunks only to share among nodes, and only when they stay long enough.
        assert n % parallel == 0 or n <= parallel
        assert duration / n >= min_chunk_s or n <= parallel


def test_chunk_count_refuses_a_duration_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        chunk_count(0.0, chunk_s=30.0, min_chunk_s=15.0, parallel=2)
