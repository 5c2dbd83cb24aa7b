"""Reading a job's audio file and cutting it at silences into chunks that nodes transcribe.

The router calls `cut` in a worker thread: the file is decoded with PyAV (bundled
FFmpeg) to 16 kHz mono, speech is found with the Silero VAD that ships inside
faster-whisper, and the cuts are placed in the middle of pauses so that no word is
split between two chunks. Each chunk travels to its nodes as a 16 kHz mono WAV; the
chunks' verified transcripts are joined back by `stitch`.

Everything a user's bytes can do wrong ends in BadInput with a message that says what
to send instead; no other exception escapes `load_audio` or `cut` for any input.
"""

from __future__ import annotations

import bisect
import io
import math
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import av
import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps
from numpy.typing import NDArray

from cortensor.errors import BadInput

SAMPLE_RATE = 16000
WHISPER_WINDOW_S = 30.0
"""Whisper reads audio in windows of 30 s; a chunk that fits one is transcribed in one pass."""
FORMATS = ("wav", "flac", "mp3", "ogg")
MIN_RATE, MAX_RATE = 4000, 384000
"""Sample rates accepted. Far below, one packet resamples to minutes of 16 kHz audio."""
_ACCEPTED = "WAV, FLAC, MP3 or OGG"

VAD_OPTIONS = VadOptions(
    threshold=0.5,
    min_speech_duration_ms=100,
    min_silence_duration_ms=300,
    speech_pad_ms=100,
)
"""Pauses of 0.3 s or more separate spans, so that the pauses between sentences and most
between phrases are places to cut; faster-whisper's defaults (2 s) would find almost none
in continuous speech. The 0.1 s padding keeps a cut in a pause's middle clear of the
words on either side."""

Samples = NDArray[np.float32]


def sniff_format(data: bytes) -> str | None:
    """The container format of an audio file from its first bytes: wav, flac, ogg or mp3."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:3] == b"ID3":
        return "mp3"
    # An MPEG audio frame: 11 sync bits, then a layer other than the reserved 00 (which
    # also keeps out ADTS AAC, whose sync word looks the same).
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06:
        return "mp3"
    return None


def _describe_start(data: bytes) -> str:
    head = data[:8]
    if not head:
        return "the file is empty"
    shown = f"it starts with bytes {head.hex(' ')} ({head!r})"
    try:
        data[:64].decode("ascii")
    except UnicodeDecodeError:
        return shown
    return f"{shown}, which looks like text, not audio (is it base64-encoded twice?)"


def load_audio(data: bytes, *, max_seconds: float) -> Samples:
    """The samples of an audio file, as float32 at 16 kHz mono.

    Raises BadInput when the format is not WAV, FLAC, MP3 or OGG, when the file cannot
    be decoded, when it holds no samples, or when it lasts longer than `max_seconds`.
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise BadInput(
            f"audio is not a {_ACCEPTED} file: {_describe_start(data)}; send one of those formats"
        )
    samples = _decode(data, fmt, max_seconds)
    if samples.size == 0:
        raise BadInput(f"the {fmt} file holds no audio samples; send a recording with sound")
    return samples


class _TooLong(Exception):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


def _decode(data: bytes, fmt: str, max_seconds: float) -> Samples:
    """Decodes with a cap on the decoded length, so that a small file of compressed
    silence cannot expand to hours of samples in memory."""
    limit = math.floor(max_seconds * SAMPLE_RATE)
    try:
        with av.open(io.BytesIO(data), mode="r", format=fmt, metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise BadInput(f"the {fmt} file has no audio stream; send a file with sound")
            codec = container.streams.audio[0].codec_context
            if codec is None:
                raise BadInput(f"the {fmt} file's audio codec is unknown; send {_ACCEPTED} audio")
            rate = codec.sample_rate or SAMPLE_RATE
            if not MIN_RATE <= rate <= MAX_RATE:
                raise BadInput(
                    f"the {fmt} file says its sample rate is {rate} Hz; send audio sampled at"
                    f" {MIN_RATE} to {MAX_RATE} Hz"
                )
            try:
                pieces = _read_samples(container, limit)
            except _TooLong as too_long:
                declared = (container.duration or 0) / av.time_base
                seconds = max(declared, too_long.seconds)
                raise BadInput(
                    f"audio lasts {'about ' if declared else 'over '}{seconds:.1f} s, more than"
                    f" the limit of {max_seconds:g} s; send a shorter recording"
                ) from None
    except BadInput:
        raise
    except (av.FFmpegError, ValueError, OSError, EOFError, IndexError, RuntimeError) as e:
        reason = (
            (e.strerror if isinstance(e, av.FFmpegError) else None) or str(e) or type(e).__name__
        )
        raise BadInput(
            f"audio could not be decoded as {fmt}: {reason}; send an intact {_ACCEPTED} file"
        ) from None
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return (np.concatenate(pieces).astype(np.float32) / 32768.0).astype(np.float32)


def _read_samples(container: Any, limit: int) -> list[NDArray[np.int16]]:
    """The int16 samples of the first audio stream, resampled to 16 kHz mono.

    A packet that does not decode is skipped, as faster-whisper skips invalid frames, so
    that one damaged stretch does not lose the whole file; a file of which no packet
    decodes could not be decoded at all.
    """
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    pieces: list[NDArray[np.int16]] = []
    total = damaged = 0

    def take(frames: list[Any]) -> None:
        nonlocal total
        for out in frames:
            piece = out.to_ndarray().reshape(-1)
            total += piece.size
            if total > limit:
                raise _TooLong(total / SAMPLE_RATE)
            pieces.append(piece)

    for packet in container.demux(container.streams.audio[0]):
        try:
            frames = packet.decode()
        except av.InvalidDataError:
            damaged += 1
            continue
        for frame in frames:
            frame.pts = None  # damaged files' timestamps jump; the resampler need not check
            take(resampler.resample(frame))
    take(resampler.resample(None))
    if not pieces and damaged:
        raise ValueError(f"none of its {damaged} packets decoded")
    return pieces


def speech_spans(samples: Samples) -> list[tuple[float, float]]:
    """Where someone speaks, as (start, end) in seconds, in order (Silero VAD)."""
    if samples.size == 0:
        return []
    found = get_speech_timestamps(samples, VAD_OPTIONS, sampling_rate=SAMPLE_RATE)
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in found]


def _gap_middles(duration: float, spans: Sequence[tuple[float, float]]) -> list[float]:
    """The middle of each pause between two speech spans, in order."""
    clean = sorted(
        (max(0.0, s), min(duration, e))
        for s, e in spans
        if math.isfinite(s) and math.isfinite(e) and min(duration, e) > max(0.0, s)
    )
    merged: list[list[float]] = []
    for start, end in clean:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a[1] + b[0]) / 2 for a, b in pairwise(merged)]


def _nearest(points: Sequence[float], target: float, lo: float, hi: float) -> float | None:
    """The point in [lo, hi] nearest to `target` (the earlier one on a tie), if any."""
    first, last = bisect.bisect_left(points, lo), bisect.bisect_right(points, hi)
    if first >= last:
        return None
    i = min(max(bisect.bisect_left(points, target, first, last), first), last - 1)
    best = points[i]
    if i > first and abs(points[i - 1] - target) <= abs(best - target):
        best = points[i - 1]
    return best


def chunk_count(duration: float, *, chunk_s: float, min_chunk_s: float, parallel: int) -> int:
    """How many chunks to cut `duration` seconds of audio into.

    At least enough that none is longer than `chunk_s`; then, when `parallel` nodes can
    take chunks at the same time, rounded up to a multiple of `parallel` so that every
    node gets an equal share, as long as chunks stay at least `min_chunk_s` long (or,
    failing that, as many as fit at that length, up to `parallel`). Whisper spends about
    as much on a short chunk's padded 30 s window as on a full one, so more chunks than
    nodes only cost more.
    """
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds, not {duration}")
    least = max(1, math.ceil(duration / chunk_s))
    if parallel <= 1:
        return least
    even = math.ceil(least / parallel) * parallel
    if duration / even >= min_chunk_s:
        return even
    return max(least, min(parallel, math.floor(duration / min_chunk_s)))


def plan_chunks(
    duration: float,
    spans: Sequence[tuple[float, float]],
    chunk_s: float,
    count: int | None = None,
) -> list[tuple[float, float]]:
    """Where to cut audio of `duration` seconds into about `chunk_s`-second chunks.

    Returns n = `count`, or ceil(duration / chunk_s), contiguous (start, end) pairs covering
    [0, duration]. Cut k goes to the middle of the pause between two speech spans that is
    nearest to its ideal place k * duration / n, among the pauses within reach: those
    that leave this chunk and every later one at least a quarter of the ideal length.
    Among them, pauses that keep every chunk within max(chunk_s, 30 s) (Whisper's window)
    come first. A cut with no pause in reach goes to its ideal place, moved as little as
    the same bounds require.
    """
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds, not {duration}")
    if not (math.isfinite(chunk_s) and chunk_s > 0):
        raise ValueError(f"chunk_s must be a positive number of seconds, not {chunk_s}")
    n = max(1, math.ceil(duration / chunk_s) if count is None else count)
    if n == 1:
        return [(0.0, duration)]
    ideal = duration / n
    shortest = ideal / 4
    cap = max(chunk_s, WHISPER_WINDOW_S)
    middles = _gap_middles(duration, spans)
    cuts = [0.0]
    for k in range(1, n):
        previous, after = cuts[-1], n - k
        target = k * ideal
        lo, hi = previous + shortest, duration - after * shortest
        # Within the window every chunk so far and every later chunk can stay under the cap.
        fit_lo, fit_hi = max(lo, duration - after * cap), min(hi, previous + cap)
        cut = _nearest(middles, target, fit_lo, fit_hi)
        if cut is None:
            cut = _nearest(middles, target, lo, hi)
        if cut is None:
            low, high = (fit_lo, fit_hi) if fit_lo <= fit_hi else (lo, hi)
            cut = min(max(target, low), high)
        cuts.append(cut)
    cuts.append(duration)
    return list(pairwise(cuts))


def encode_wav(samples: Samples) -> bytes:
    """16-bit PCM WAV, 16 kHz, mono, of float samples in [-1, 1] (clipped beyond)."""
    clean = np.nan_to_num(np.asarray(samples, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    pcm = np.clip(np.round(clean * 32768.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class Chunk:
    """One stretch of a job's audio, as the WAV its nodes receive."""

    index: int
    start_s: float
    end_s: float
    wav: bytes


def cut(
    data: bytes,
    *,
    chunk_s: float,
    max_seconds: float,
    parallel: int = 1,
    min_chunk_s: float | None = None,
    parts: Callable[[float], int] | None = None,
) -> list[Chunk]:
    """An audio file cut at pauses into chunks of at most about `chunk_s` seconds (one when
    short), as many as `chunk_count` says for `parallel` nodes; or, given `parts`, as many
    as it says for the audio's length in seconds (then chunks may be longer than
    `chunk_s`: cortensor.protocol.parts.speech_parts).

    Raises BadInput for a file that `load_audio` refuses or that holds no speech.
    """
    samples = load_audio(data, max_seconds=max_seconds)
    spans = speech_spans(samples)
    if not spans:
        raise BadInput(
            "no speech found in the audio (silence only?); send a recording in which someone speaks"
        )
    duration = samples.size / SAMPLE_RATE
    count = (
        max(1, parts(duration))
        if parts is not None
        else chunk_count(
            duration,
            chunk_s=chunk_s,
            min_chunk_s=chunk_s / 2 if min_chunk_s is None else min_chunk_s,
            parallel=parallel,
        )
    )
    plan = plan_chunks(duration, spans, max(chunk_s, duration / count), count)
    edges = sorted({0, samples.size} | {round(start * SAMPLE_RATE) for start, _ in plan})
    return [
        Chunk(
            index=i,
            start_s=a / SAMPLE_RATE,
            end_s=b / SAMPLE_RATE,
            wav=encode_wav(samples[a:b]),
        )
        for i, (a, b) in enumerate(pairwise(edges))
    ]
