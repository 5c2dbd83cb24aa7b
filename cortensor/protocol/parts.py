"""Jobs split into parts that different nodes run at the same time, and their stitching.

A transcribe job longer than one chunk is cut at silences (cortensor.audio); an embed
or classify job with more texts than one shard is cut into shards of consecutive texts.
Each part is an ordinary job in the ledger, with a parent: routed, replicated and
verified on its own. When its last part is decided, the parent's verdict is stitched
from the parts' verified outputs, in order, and names the nodes of every part.

Pure logic: the router and the guard call it with what they read from the ledger.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from cortensor.protocol.units import OpenJob, whole_job
from cortensor.schemas import ANONYMOUS, JobRequest, JobStatus, PartVerdict, Verdict


class AudioSpan(Protocol):
    """A stretch of a job's audio, as 16 kHz mono WAV (cortensor.audio.Chunk)."""

    @property
    def start_s(self) -> float: ...
    @property
    def end_s(self) -> float: ...
    @property
    def wav(self) -> bytes: ...


def part_id(parent: UUID, part: int) -> UUID:
    """The job id of part `part` of job `parent`: the same on every redelivery."""
    return uuid.uuid5(parent, f"part-{part}")


def split_job(
    job: JobRequest,
    deadline_at: datetime,
    *,
    shard_inputs: int,
    chunks: Sequence[AudioSpan] = (),
    owner: str = ANONYMOUS,
) -> tuple[OpenJob | None, list[OpenJob]]:
    """The parent (None when the job runs whole) and the units to route.

    Text jobs are cut into shards of at most `shard_inputs` texts; transcribe jobs into
    the given audio chunks. Every unit keeps the job's model, redundancy, hardware class,
    options, deadline and `owner`.
    """
    if shard_inputs < 1:
        raise ValueError("shard_inputs must be at least 1")
    whole = whole_job(job, deadline_at, owner=owner)
    params = dict(whole.params)
    if job.task == "transcribe":
        if not chunks:
            raise ValueError("a transcribe job needs at least one audio chunk")
        spans = [_Span([], c.wav, {"start_s": c.start_s, "end_s": c.end_s}) for c in chunks]
    elif "roles" in params:
        # One conversation, one answer: its messages stay together.
        spans = [_Span(whole.inputs, None, {})]
    else:
        spans = [
            _Span(
                job.inputs[first : first + shard_inputs],
                None,
                {"first_input": first, "inputs": len(job.inputs[first : first + shard_inputs])},
            )
            for first in range(0, len(job.inputs), shard_inputs)
        ]
    if len(spans) == 1:
        return None, [replace(whole, audio=spans[0].audio, params={**params, **spans[0].where})]
    parent = replace(whole, inputs=[], params={**params, "parts": len(spans)})
    units = [
        replace(
            whole,
            job_id=part_id(job.job_id, index),
            inputs=span.inputs,
            audio=span.audio,
            params={**params, **span.where},
            parent_id=job.job_id,
            part=index,
        )
        for index, span in enumerate(spans)
    ]
    return parent, units


@dataclass(frozen=True, slots=True)
class _Span:
    """What one part carries: its texts or its audio, and where it sits in the job."""

    inputs: list[str]
    audio: bytes | None
    where: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DecidedPart:
    """One part of a split job, as the ledger holds it once decided."""

    part: int
    job_id: UUID
    params: Mapping[str, Any]
    verdict: Verdict
    output: Any
    """The canonical output (JSON data) when verified, else None."""


_STATUS_ORDER: tuple[JobStatus, ...] = ("rejected", "failed", "inconclusive")


def stitch(
    parent_id: UUID,
    task: str,
    model: str,
    parts: Sequence[DecidedPart],
    *,
    owner: str = ANONYMOUS,
) -> Verdict:
    """The parent's verdict, for its `owner`: the parts' outputs joined in order when
    every part is verified; otherwise the worst part's status, with the parts that
    caused it named."""
    ordered = sorted(parts, key=lambda p: p.part)
    summaries = [_summary(p) for p in ordered]
    common: dict[str, Any] = {
        "job_id": parent_id,
        "owner": owner,
        "task": task,
        "model": model,
        "replicas": sum(p.verdict.replicas for p in ordered),
        "agreeing": _union(p.verdict.agreeing for p in ordered),
        "disagreeing": _union(p.verdict.disagreeing for p in ordered),
        "timed_out": _union(p.verdict.timed_out for p in ordered),
        "parts": summaries,
    }
    bad = [p for p in ordered if p.verdict.status != "verified"]
    if bad:
        status = next(s for s in _STATUS_ORDER if any(p.verdict.status == s for p in bad))
        worst = [p for p in bad if p.verdict.status == status]
        named = ", ".join(str(p.part) for p in worst)
        reason = (
            f"{len(worst)} of {len(ordered)} parts {status} (part {named}):"
            f" {worst[0].verdict.reason}"
        )
        return Verdict(status=status, reason=reason, **common)
    output = _join(task, ordered)
    verdict = Verdict(status="verified", reason=f"all {len(ordered)} parts verified", **common)
    return verdict.with_output(output)


def _summary(part: DecidedPart) -> PartVerdict:
    p, v = part.params, part.verdict
    return PartVerdict(
        part=part.part,
        job_id=part.job_id,
        status=v.status,
        reason=v.reason,
        start_s=p.get("start_s"),
        end_s=p.get("end_s"),
        first_input=p.get("first_input"),
        inputs=p.get("inputs"),
        agreeing=v.agreeing,
        disagreeing=v.disagreeing,
    )


def _union(lists: Any) -> list[str]:
    seen: dict[str, None] = {}
    for names in lists:
        for name in names:
            seen.setdefault(name, None)
    return list(seen)


def _join(task: str, parts: Sequence[DecidedPart]) -> Any:
    if task != "transcribe":
        return [item for p in parts for item in p.output]
    return stitch_transcripts([(float(p.params.get("start_s", 0.0)), p.output) for p in parts])


def stitch_transcripts(parts: Sequence[tuple[float, Mapping[str, Any]]]) -> dict[str, Any]:
    """One transcript (JSON data) from (chunk start in seconds, chunk transcript) in order.

    Texts are joined by single spaces (empty ones skipped), segments are moved to the
    original file's time (rounded to 0.01 s), the language is the one most chunks heard
    (the first of them on a tie), and the duration runs to the end of the last chunk.
    A segment's times are first kept within its chunk: Whisper may stamp the last segment
    with the end of its 30 s window, past the end of a shorter chunk.
    """
    if not parts:
        return {"text": "", "language": "", "duration_s": 0.0, "segments": []}
    texts = [str(t.get("text", "")).strip() for _, t in parts]
    segments = [
        _shifted(segment, offset, float(t.get("duration_s", 0.0)))
        for offset, t in parts
        for segment in t.get("segments", [])
    ]
    heard = [str(t.get("language", "")) for _, t in parts]
    counts = Counter(heard)
    language = max(heard, key=lambda name: (counts[name], -heard.index(name)))
    last_start, last = parts[-1]
    return {
        "text": " ".join(t for t in texts if t),
        "language": language,
        "duration_s": round(last_start + float(last.get("duration_s", 0.0)), 2),
        "segments": segments,
    }


def _shifted(segment: Mapping[str, Any], offset: float, duration: float) -> dict[str, Any]:
    start, end = float(segment["start"]), float(segment["end"])
    if duration > 0:
        start, end = min(max(start, 0.0), duration), min(max(end, 0.0), duration)
    return {
        "start": round(offset + start, 2),
        "end": round(offset + max(start, end), 2),
        "text": segment["text"],
    }


@dataclass(frozen=True, slots=True)
class SpeechCost:
    """What transcribing costs one node, as the router's model of it: a part of `a`
    seconds is decoded as p = ceil(a / window_s) pieces of about a / p seconds, up to
    `batch` pieces at once; a batch of q pieces costs q * per_window_s (the encoder and
    the prompt, paid per window whatever its length) plus per_audio_s * a / p * q **
    batch_exponent (decoding: the batch's pieces step together, so one more piece costs
    less than a piece alone; a node decoding one piece at a time has batch 1). Each part
    also costs `per_part_s` of pipeline (routing, the node's task, the guard's verdict).

    Defaults: Whisper base int8 on one thread, fitted to CPU seconds measured on the
    79 s benchmark file, its halves and its 20 s chunks on a quiet machine
    (docs/design.md, "One long file"); per_part_s is what a part costs besides its
    windows: the language detection pass (about 0.7 s) and the pipeline (about 0.3 s).
    """

    per_window_s: float = 0.3
    per_audio_s: float = 0.061
    batch_exponent: float = 0.9
    per_part_s: float = 1.0
    window_s: float = 30.0
    batch: int = 8

    def part_s(self, audio_s: float) -> float:
        """Seconds one node spends on one part of `audio_s` seconds."""
        pieces = max(1, math.ceil(audio_s / self.window_s - 1e-9))
        piece_s = audio_s / pieces
        batch = max(1, self.batch)
        total = self.per_part_s
        for first in range(0, pieces, batch):
            q = min(batch, pieces - first)
            total += q * self.per_window_s + self.per_audio_s * piece_s * q**self.batch_exponent
        return total

    def finish_s(self, audio_s: float, parts: int, slots: int) -> float:
        """When the last of `parts` equal parts of `audio_s` seconds is done on `slots`
        nodes that run them at the same time, each its share one after another."""
        return math.ceil(parts / max(1, slots)) * self.part_s(audio_s / parts)


def speech_parts(
    audio_s: float,
    slots: int,
    *,
    cost: SpeechCost,
    min_part_s: float,
    max_part_s: float,
) -> int:
    """How many parts to cut `audio_s` seconds of speech into when `slots` parts can run
    at the same time (free eligible nodes divided by the redundancy): the count whose
    last part is done first under `cost`, the fewest parts on a tie. Parts are at most
    `max_part_s` long, and at least `min_part_s` where the audio allows more than one.

    With nodes that batch (cost.batch > 1), one node decodes a long part's windows
    together for less than the same windows as separate parts, so a lone node gets the
    whole file as one part, and n nodes get n parts, rather than 30 s chunks queued.
    """
    if not (math.isfinite(audio_s) and audio_s > 0):
        raise ValueError(f"audio_s must be a positive number of seconds, not {audio_s}")
    if not (max_part_s > 0 and min_part_s > 0):
        raise ValueError("min_part_s and max_part_s must be positive")
    least = max(1, math.ceil(audio_s / max_part_s - 1e-9))
    most = max(least, math.floor(audio_s / min_part_s))
    # Past `slots` parts per round, a count only adds rounds: look at most two rounds
    # beyond the least, which bounds the search for long files on big fleets.
    most = min(most, least + 2 * max(1, slots))
    return min(range(least, most + 1), key=lambda k: (cost.finish_s(audio_s, k, slots), k))


def speech_split(
    slots: int, *, batch: int, window_s: float, min_part_s: float
) -> Callable[[float], int]:
    """`speech_parts` as the router asks it, for nodes that decode `batch` windows of
    `window_s` seconds at once (0: one at a time), as a function of the audio's length:
    parts are at most one batch of windows long."""
    cost = SpeechCost(window_s=window_s, batch=max(1, batch))
    longest = window_s * cost.batch
    return lambda audio_s: speech_parts(
        audio_s, slots, cost=cost, min_part_s=min_part_s, max_part_s=longest
    )
