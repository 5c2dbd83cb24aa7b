"""Where each process's CPU goes during a benchmark: py-spy samples the fleet's
processes from outside (no change to them, a few percent of overhead), and the samples
are summed by the library each frame belongs to."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

SAMPLE_HZ = 200

LIBRARIES: tuple[tuple[str, str], ...] = (
    ("onnxruntime", "model"),
    ("ctranslate2", "model"),
    ("faster_whisper", "model"),
    ("tokenizers", "model"),
    ("numpy", "model"),
    ("asyncpg", "postgresql"),
    ("aio_pika", "amqp"),
    ("aiormq", "amqp"),
    ("pamqp", "amqp"),
    ("kombu", "amqp"),
    ("amqp/", "amqp"),
    ("celery", "celery"),
    ("billiard", "celery"),
    ("nats", "nats"),
    ("pydantic", "pydantic"),
    ("cryptography", "signatures"),
    ("structlog", "logging"),
    ("logging", "logging"),
    ("json", "json"),
    ("asyncio", "event loop"),
    ("selectors", "event loop"),
    ("uvloop", "event loop"),
    ("cortensor", "cortensor"),
)
"""A frame's library, by the first of these found in its file path (the innermost frame
that names one decides, so that cortensor code calling asyncpg counts as postgresql)."""


IDLE = ("select (selectors.py", "poll (kombu/utils/eventio.py", "wait (threading.py")
"""Innermost frames of a thread that waits: py-spy without pausing its target (which
would cost the target more) cannot always tell them from work, so they are left out."""


def library(frame: str) -> str:
    """The library a py-spy frame ("function (path:line)") belongs to, or "other"."""
    where = frame.rsplit("(", 1)[-1]
    for needle, name in LIBRARIES:
        if needle in where:
            return name
    return "other"


def summarize(raw: Path, top: int = 8) -> dict[str, Any]:
    """Share of the working samples (IDLE left out) by library (of each stack's
    innermost known frame) and the functions that use the most CPU themselves, from a
    py-spy raw (collapsed) file."""
    by_library: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in IDLE):
            waiting += count
            continue
        total += count
        by_function[frames[-1]] += count
        named = [library(f) for f in reversed(frames)]
        by_library[next((n for n in named if n != "other"), "other")] += count
    if not total:
        return {"samples": 0, "waiting": waiting}
    return {
        "samples": total,
        "waiting": waiting,
        "share_by_library": {
            name: round(n / total, 3) for name, n in by_library.most_common() if n / total >= 0.01
        },
        "top_functions": [
            {"function": f, "share": round(n / total, 3)} for f, n in by_function.most_common(top)
        ],
    }


@contextlib.contextmanager
def profiled(pids: Mapping[str, list[int]], folder: Path) -> Iterator[dict[str, Path]]:
    """Sample the processes `pids` (by component) with py-spy while the block runs;
    yields the raw files (one per process, "<component>-<pid>.txt"), written when the
    block ends. Without py-spy on PATH, or without pids, profiles nothing."""
    spy = shutil.which("py-spy")
    files: dict[str, Path] = {}
    procs: list[subprocess.Popen[bytes]] = []
    if spy is not None and pids:
        folder.mkdir(parents=True, exist_ok=True)
        for component, ids in pids.items():
            for pid in ids:
                out = folder / f"{component}-{pid}.txt"
                files[f"{component}-{pid}"] = out
                procs.append(
                    subprocess.Popen(
                        [
                            *(spy, "record", "--pid", str(pid), "--rate", str(SAMPLE_HZ)),
                            *("--format", "raw", "--nonblocking", "--output", str(out)),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
    try:
        yield files
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
