"""Transcripts agree when their word error rate, after normalization, is small.

Whisper decodes token by token: a tiny change in the logits can pick another spelling
or drop a filler word. Whisper base int8 and float32 on the same synthetic speech differ
by one or two words in forty; on 70 s of espeak-ng speech cut into three chunks, the
symmetric rate between int8 and float32 was 0.016-0.018 per chunk for base and up to
0.086 for tiny.en. Two replicas of the same precision therefore agree up to 0.10 and
replicas of different precisions up to 0.20. A wrong answer (random words, a constant,
half the words replaced or dropped) has a rate of 0.5 or more.

The rate is made symmetric by taking the larger of the two directions, that is the
word edits divided by the length of the shorter transcript: a replica cannot agree by
being much shorter or longer than the other. Only the words are compared: language,
duration and segment times are not.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

import jiwer

from cortensor.protocol.comparators.precision import pair

THRESHOLDS: dict[frozenset[str], float] = {
    frozenset({"fp32"}): 0.10,
    frozenset({"fp16"}): 0.10,
    frozenset({"int8"}): 0.10,
    frozenset({"fp32", "fp16"}): 0.20,
    frozenset({"fp32", "int8"}): 0.20,
    frozenset({"fp16", "int8"}): 0.20,
}

_APOSTROPHES = frozenset("'’ʼ`")


def threshold(precision_a: str, precision_b: str) -> float:
    """The highest word error rate at which transcripts of these precisions (labels, see
    comparators.precision) still agree; two builds of one precision count as two
    precisions."""
    precisions, builds_differ = pair(precision_a, precision_b)
    return 0.20 if builds_differ else THRESHOLDS.get(precisions, 0.20)


def _blank(char: str) -> str:
    if char in _APOSTROPHES:
        return ""  # "don't" and "dont" are one word
    return " " if unicodedata.category(char)[0] in "PSZC" else char


def normalize(text: str) -> str:
    """Lower case, punctuation and symbols removed, whitespace collapsed; digits kept.

    Apostrophes are dropped ("don't" -> "dont"); other punctuation splits words
    ("twenty-one" -> "twenty one"), so hyphenation does not count as an error.
    """
    return " ".join("".join(_blank(c) for c in text.casefold()).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word edits to turn `reference` into `hypothesis`, per reference word, both normalized.

    Two empty texts have a rate of 0.0; one empty and one not, 1.0.
    """
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref or not hyp:
        return 0.0 if ref == hyp else 1.0
    return float(jiwer.wer(ref, hyp))


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float
        return False


def _segment_ok(segment: Any) -> bool:
    return (
        isinstance(segment, dict)
        and _finite(segment.get("start"))
        and _finite(segment.get("end"))
        and isinstance(segment.get("text"), str)
    )


def transcript_text(output: Any) -> str | None:
    """The text of a transcript output, or None when it is not a transcript.

    A transcript is {"text", "language", "duration_s", "segments"}, the segments being
    {"start", "end", "text"} with finite times.
    """
    if not isinstance(output, dict):
        return None
    text, segments = output.get("text"), output.get("segments")
    if not isinstance(text, str) or not isinstance(output.get("language"), str):
        return None
    if not _finite(output.get("duration_s")) or not isinstance(segments, list):
        return None
    if not all(_segment_ok(s) for s in segments):
        return None
    return text


def symmetric_wer(a: str, b: str) -> float:
    """The larger word error rate of the two directions."""
    return max(word_error_rate(a, b), word_error_rate(b, a))


def agree(a: Any, precision_a: str, b: Any, precision_b: str) -> bool:
    """Whether two transcribe outputs are the same answer."""
    text_a, text_b = transcript_text(a), transcript_text(b)
    if text_a is None or text_b is None:
        return False
    return symmetric_wer(text_a, text_b) <= threshold(precision_a, precision_b) + 1e-9
