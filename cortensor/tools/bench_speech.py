"""One long speech file on one node: faster-whisper's sequential decoding against its
batched pipeline, called directly (no network), and the chunks the router would cut.
ops/bench calls `long_file` and `split_speedup`; `python -m cortensor.tools.bench_speech`
prints them.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer

from cortensor import audio
from cortensor.adapters.ledger import migrate
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.catalog import WHISPER_BASE
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.whisper import WINDOW_S, WhisperRuntime
from cortensor.protocol.comparators.transcribe import symmetric_wer, word_error_rate
from cortensor.protocol.parts import speech_split
from cortensor.settings import Settings
from cortensor.tools import speech
from cortensor.tools.fleet import Fleet
from cortensor.tools.measure import TICK, component_of, transcribe_once


def _timed(step: Callable[[], str], runs: int) -> tuple[list[float], list[float], list[str]]:
    seconds, cpu, texts = [], [], []
    for _ in range(runs):
        started, cpu_started = time.perf_counter(), time.process_time()
        texts.append(step())
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return seconds, cpu, texts


def _figures(seconds: Sequence[float], cpu: Sequence[float], audio_s: float) -> dict[str, float]:
    # CPU seconds as well as wall time: on a machine shared with other work, the wall
    # time of one thread grows with the load, its CPU time much less.
    return {
        "median_s": round(statistics.median(seconds), 3),
        "min_s": round(min(seconds), 3),
        "max_s": round(max(seconds), 3),
        "rtf": round(statistics.median(seconds) / audio_s, 4),
        "cpu_s_min": round(min(cpu), 3),
        "cpu_s_max": round(max(cpu), 3),
    }


def _variants(runtime: WhisperRuntime, wav: bytes, batch_sizes: Sequence[int]) -> dict[str, Any]:
    steps: dict[str, Callable[[], str]] = {
        "sequential": lambda: runtime.transcribe(wav, None).text,
    }
    for size in batch_sizes:
        steps[f"batched_{size}"] = lambda size=size: (
            runtime.transcribe(  # type: ignore[misc]
                wav, None, batch_size=size
            ).text
        )
    return steps


def measure(
    runtime: WhisperRuntime,
    wav: bytes,
    spoken: str | None,
    runs: int,
    batch_sizes: Sequence[int],
) -> dict[str, Any]:
    """Each way of decoding `wav`, `runs` times after one warm-up: seconds, real-time
    factor, word error rate against `spoken`, whether every run gave the same text, and
    the symmetric word error rate against the sequential transcript (what the transcribe
    comparator checks between two replicas)."""
    audio_s = audio.load_audio(wav, max_seconds=3600).size / audio.SAMPLE_RATE
    out: dict[str, Any] = {"audio_s": round(audio_s, 2)}
    sequential_text = ""
    # Audio of one window or less is decoded one way whatever the batch size.
    sizes = batch_sizes if audio_s > WINDOW_S else ()
    for name, step in _variants(runtime, wav, sizes).items():
        step()  # warm-up
        seconds, cpu, texts = _timed(step, runs)
        row: dict[str, Any] = _figures(seconds, cpu, audio_s)
        row["same_text_every_run"] = len(set(texts)) == 1
        if spoken is not None:
            row["wer"] = round(word_error_rate(spoken, texts[0]), 4)
        if name == "sequential":
            sequential_text = texts[0]
        else:
            row["wer_vs_sequential"] = round(symmetric_wer(sequential_text, texts[0]), 4)
        out[name] = row
    return out


def long_file(
    settings: Settings,
    wav: Path,
    spoken: str,
    runs: int = 3,
    *,
    threads: Sequence[int] = (1, 2),
    batch_sizes: Sequence[int] = (4, 8, 16),
    chunk_parallel: int = 2,
) -> dict[str, Any]:
    """Whisper base int8 on `wav` (whose words are `spoken`) called directly: sequential
    against batched for each thread count, on the whole file and on what the router
    cuts it into for `chunk_parallel` nodes: "parts" for nodes that batch
    (Settings.whisper_batch_size), "chunks" of one window at most for nodes that do not."""
    data = wav.read_bytes()
    manifest = load_manifest(settings.models_dir)
    variant = manifest.variant_for(WHISPER_BASE, "cpu-int8")
    cuts = {
        # What the router cuts for `chunk_parallel` nodes that batch, and for nodes that
        # do not (parts of one window at most).
        name: audio.cut(
            data,
            chunk_s=settings.chunk_s,
            max_seconds=settings.max_audio_s,
            parts=speech_split(
                chunk_parallel,
                batch=batch,
                window_s=settings.chunk_s,
                min_part_s=settings.chunk_min_s,
            ),
        )
        for name, batch in (("parts", settings.whisper_batch_size), ("chunks", 0))
    }
    report: dict[str, Any] = {"runs": runs, "parallel": chunk_parallel}
    for n in threads:
        runtime = WhisperRuntime.from_manifest(settings.models_dir, variant, threads=n)
        report[f"threads_{n}"] = {"whole_file": measure(runtime, data, spoken, runs, batch_sizes)}
        for name, pieces in cuts.items():
            report[f"threads_{n}"][name] = [
                {"start_s": round(c.start_s, 2), "end_s": round(c.end_s, 2)}
                | measure(runtime, c.wav, None, runs, batch_sizes[-1:])
                for c in pieces
            ]
    return report


def _cpu_by_process(namespace: str) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by each router, guard and node process of the fleet."""
    used: dict[int, tuple[str, float]] = {}
    for proc in Path("/proc").iterdir():
        role = component_of(proc.name, namespace) if proc.name.isdigit() else None
        if role not in ("router", "guard", "node"):
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[int(proc.name)] = (str(role), (int(fields[11]) + int(fields[12])) / TICK)
    return used


def _critical_cpu_s(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds on a job's path through a fleet whose nodes work side by side: the
    router's and the guard's, plus the busiest node's, and their sum ("total"). On a
    machine shared with other work this is what the wall time would be with a core for
    each process, less the waits between processes (the router's and the guard's
    background work while the job ran is counted in)."""
    spent: dict[str, list[float]] = {}
    for pid, (role, seconds) in after.items():
        spent.setdefault(role, []).append(seconds - before.get(pid, (role, 0.0))[1])
    path = {role: max(v) if role == "node" else sum(v) for role, v in spent.items()}
    return {role: round(v, 2) for role, v in sorted(path.items())} | {
        "total": round(sum(path.values()), 2)
    }


def _on_fleet(
    settings: Settings, wav: Path, spoken: str, runs: int, nodes: int, started: list[str]
) -> dict[str, Any]:
    data = wav.read_bytes()
    log_dir = Path(tempfile.mkdtemp(prefix="cortensor-bench-split-"))
    with Fleet(settings, nodes=nodes, log_dir=log_dir) as fleet:
        started.extend(fleet.wait_ready())
        asyncio.run(transcribe_once(settings, data))  # warm-up: the nodes' first windows
        walls, critical, verdict = [], [], None
        for _ in range(runs):
            before = _cpu_by_process(settings.namespace)
            elapsed, verdict = asyncio.run(transcribe_once(settings, data))
            walls.append(elapsed)
            critical.append(_critical_cpu_s(before, _cpu_by_process(settings.namespace)))
    assert verdict is not None
    text = verdict.transcript.text if verdict.transcript else ""
    return {
        "wall_s": round(statistics.median(walls), 2),
        "wall_s_all": [round(w, 2) for w in walls],
        "critical_cpu_s_all": [c["total"] for c in critical],
        "critical_cpu_s_by_role": critical,
        "parts": [round((p.end_s or 0.0) - (p.start_s or 0.0), 1) for p in verdict.parts]
        or [round(speech.duration_s(wav), 1)],
        "wer": round(word_error_rate(spoken, text), 4),
        "logs": str(log_dir),
    }


def split_speedup(
    settings: Settings, wav: Path, spoken: str, runs: int, started: list[str]
) -> dict[str, Any]:
    """One long file on a fleet of one single-thread node, then of two: wall time from
    submit to verdict (median of `runs` after a warm-up job), the parts the router cut
    it into, and the word error rate of the stitched transcript. Replaces bench.py's
    split_speedup: a warm-up job first (a fresh node's first windows are slower), every
    run's time, and the transcript's accuracy."""
    one = _on_fleet(settings, wav, spoken, runs, 1, started)
    two = _on_fleet(settings, wav, spoken, runs, 2, started)
    return {
        "audio_s": round(speech.duration_s(wav), 2),
        "runs": runs,
        "whisper_batch_size": settings.whisper_batch_size,
        "one_node": one,
        "two_nodes": two,
        "two_vs_one": round(two["wall_s"] / one["wall_s"], 3),
        "target": 0.55,
    }


def split_main(
    sentences: int = typer.Option(20, help="Known sentences in the long file."),
    runs: int = typer.Option(3, help="Timed runs on each fleet."),
    batch_size: int = typer.Option(8, help="Settings.whisper_batch_size of the fleet."),
) -> None:
    """Run `split_speedup` on a throwaway namespace and database; print JSON."""
    base = Settings()
    suffix = os.urandom(4).hex()
    settings = Settings(
        namespace=f"bench{suffix}",
        database_url=base.database_url.rsplit("/", 1)[0] + f"/cortensor_bench_{suffix}",
        models_dir=base.models_dir,
        whisper_batch_size=batch_size,
    )
    os.environ["CORTENSOR_WHISPER_BATCH_SIZE"] = str(batch_size)  # the fleet's processes
    folder = Path(tempfile.mkdtemp(prefix="cortensor-bench-speech-"))
    spoken_sentences = speech.SENTENCES[:sentences]
    wav = speech.long_speech(spoken_sentences, folder / "long.wav")
    migrate.upgrade(settings)
    asyncio.run(setup_brokers(settings))
    node_ids: list[str] = []
    try:
        report = split_speedup(settings, wav, " ".join(spoken_sentences), runs, node_ids)
    finally:
        asyncio.run(teardown_brokers(settings, [(n, "cpu-int8") for n in set(node_ids)]))
        migrate.drop_database(settings)
    print(json.dumps(report, indent=2))


def main(
    sentences: int = typer.Option(20, help="Known sentences in the long file."),
    runs: int = typer.Option(3, help="Timed runs of each measurement."),
    threads: str = typer.Option("1,2", help="CTranslate2 thread counts, comma-separated."),
    batch_sizes: str = typer.Option("4,8,16", help="Batch sizes, comma-separated."),
) -> None:
    """Print the long-file comparison as JSON."""
    folder = Path(tempfile.mkdtemp(prefix="cortensor-bench-speech-"))
    spoken_sentences = speech.SENTENCES[:sentences]
    wav = speech.long_speech(spoken_sentences, folder / "long.wav")
    report = long_file(
        Settings(),
        wav,
        " ".join(spoken_sentences),
        runs,
        threads=[int(t) for t in threads.split(",")],
        batch_sizes=[int(b) for b in batch_sizes.split(",")],
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app = typer.Typer(add_completion=False)
    app.command("direct")(main)
    app.command("split")(split_main)
    app()
