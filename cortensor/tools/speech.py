"""Synthetic speech from known sentences: espeak-ng speaks, sox converts (Debian packages
installed by ops/install). The demo, the benchmark and the tests transcribe it and score
the transcript against the words that were spoken.

Every file is 16 kHz mono. The sentences use plain words only (no numbers, no names)
so that a transcript can be scored against them by word error rate.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cortensor.errors import BadInput, PermanentError, SetupIncomplete

FORMATS = ("wav", "flac", "mp3", "ogg")

SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore every summer.",
    "A gentle breeze moved the leaves across the empty garden.",
    "We walked along the river until the sun went down.",
    "The old library keeps its rarest books behind a glass door.",
    "Please close the window before the rain comes in.",
    "My brother bakes fresh bread in the kitchen every morning.",
    "The train was late because of snow on the tracks.",
    "Children played in the park while their parents talked.",
    "The market sells apples, pears and plums in the autumn.",
    "He painted the fence white and then washed his brushes.",
    "A small boat sailed slowly toward the distant island.",
    "The teacher asked the class to read the first chapter aloud.",
    "Birds sing loudly in the trees outside my bedroom window.",
    "The doctor told him to drink more water and rest.",
    "Our neighbours planted a row of roses along the wall.",
    "The coffee shop on the corner opens early on weekdays.",
    "Thick clouds covered the mountain for most of the day.",
    "She wrapped the present in blue paper with a silver ribbon.",
    "The museum shows paintings from many different countries.",
)
"""Twenty sentences of three to four seconds each at espeak-ng's default rate."""

SHORT: tuple[str, ...] = SENTENCES[3:6]


class ToolMissing(SetupIncomplete, RuntimeError):
    """espeak-ng or sox is not installed."""


class ToolFailed(PermanentError, RuntimeError):
    """espeak-ng or sox ran and failed; the message carries what it said."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} is not installed; run ops/install")
    return path


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ToolFailed(f"{' '.join(args)} failed: {result.stderr.strip()}")


def _convert(source: Path, path: Path, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise BadInput(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # -t names the format whatever the file's suffix; -r/-c resample to 16 kHz mono.
    _run(_tool("sox"), str(source), "-t", fmt, "-r", "16000", "-c", "1", str(path))
    return path


def speak(text: str, path: Path, *, fmt: str = "wav", rate: int = 160) -> Path:
    """`text` spoken in US English at `rate` words per minute, written to `path` as `fmt`."""
    espeak = _tool("espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"
        _run(espeak, "-v", "en-us", "-s", str(rate), "-w", str(raw), text)
        return _convert(raw, path, fmt)


def silence(path: Path, seconds: float, *, fmt: str = "wav") -> Path:
    """`seconds` of digital silence at 16 kHz mono."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sox = _tool("sox")
    _run(sox, "-n", "-t", fmt, "-r", "16000", "-c", "1", str(path), "trim", "0", f"{seconds}")
    return path


def long_speech(
    sentences: Sequence[str],
    path: Path,
    pause_s: float = 0.6,
    *,
    fmt: str = "wav",
    rate: int = 160,
) -> Path:
    """The sentences spoken one after another with `pause_s` of silence between them."""
    if not sentences:
        raise BadInput("long_speech needs at least one sentence")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gap = silence(folder / "pause.wav", pause_s)
        pieces: list[str] = []
        for i, sentence in enumerate(sentences):
            if i:
                pieces.append(str(gap))
            pieces.append(str(speak(sentence, folder / f"{i}.wav", rate=rate)))
        joined = folder / "joined.wav"
        _run(_tool("sox"), *pieces, str(joined))
        return _convert(joined, path, fmt)


def duration_s(path: Path) -> float:
    """The length of an audio file in seconds, as sox reads it."""
    result = subprocess.run(
        [_tool("sox"), "--i", "-D", str(path)], capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip())
