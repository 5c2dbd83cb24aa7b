"""The benchmark behind ops/bench: the pipeline's latency and throughput as ratios to
the model's own speed, measured in the same run on the same machine. Prints JSON."""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortensor.adapters.ledger import migrate
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.catalog import EMBED_MODEL, WHISPER_BASE
from cortensor.client import Client
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.embedding import EmbeddingRuntime
from cortensor.inference.runtimes.whisper import WhisperRuntime
from cortensor.protocol.comparators.transcribe import word_error_rate
from cortensor.protocol.signing import public_bytes, refusal, sign, signature_headers
from cortensor.schemas import InferenceResult, JobRequest, Redundancy, Verdict
from cortensor.settings import Settings
from cortensor.tools import (
    bench_generate,
    bench_scale,
    bench_speech,
    fidelity,
    generation_margins,
    speech,
)
from cortensor.tools.fleet import Fleet
from cortensor.tools.measure import (
    cpu_seconds,
    fleet_pids,
    percentile,
    sentences,
    transcribe_once,
)
from cortensor.tools.profile import profiled, summarize


def direct_rate(settings: Settings, threads: int, n: int = 300, rounds: int = 5) -> float:
    """Single-sentence int8 embeddings per second, called directly in this process
    (median of `rounds` rounds: the rate moves with whatever else the machine does)."""
    manifest = load_manifest(settings.models_dir)
    runtime = EmbeddingRuntime.from_manifest(
        settings.models_dir, manifest.variant_for("all-MiniLM-L6-v2", "cpu-int8"), threads=threads
    )
    texts = sentences(n)
    for t in texts[:20]:
        runtime.embed([t])
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for t in texts:
            runtime.embed([t])
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


async def pipeline(
    settings: Settings,
    k: Redundancy,
    latency_jobs: int,
    throughput_jobs: int,
    window: int,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """Sequential latency and windowed throughput of single-sentence jobs at redundancy k
    (`auto`: as many replicas as the nodes' reputation calls for; the replicas per job
    are reported for every k);
    with `profile_dir`, where the fleet's CPU went during the throughput run (py-spy)."""
    texts = sentences(latency_jobs + throughput_jobs + 20)
    async with Client(settings) as client:
        for t in texts[:20]:  # warm-up
            await client.run(JobRequest(inputs=[t], redundancy=k))
        latencies = []
        for t in texts[20 : 20 + latency_jobs]:
            start = time.perf_counter()
            verdict = await client.run(JobRequest(inputs=[t], redundancy=k))
            latencies.append((time.perf_counter() - start) * 1000)
            assert verdict.status == "verified", verdict.reason
        gate = asyncio.Semaphore(window)

        async def one(text: str) -> Verdict:
            async with gate:
                return await client.run(JobRequest(inputs=[text], redundancy=k), timeout_s=120)

        spied = fleet_pids(settings.namespace) if profile_dir is not None else {}
        with profiled(spied, (profile_dir or Path()) / f"redundancy-{k}") as raw:
            before, client_before = cpu_seconds(settings.namespace), time.process_time()
            start = time.perf_counter()
            verdicts = await asyncio.gather(*(one(t) for t in texts[20 + latency_jobs :]))
            elapsed = time.perf_counter() - start
            after, client_after = cpu_seconds(settings.namespace), time.process_time()
    cpu = {name: after[name] - before.get(name, 0.0) for name in after}
    cpu["client"] = client_after - client_before
    return {
        "redundancy": k,
        "latency_ms": {
            "jobs": latency_jobs,
            "p50": round(statistics.median(latencies), 2),
            "p99": round(percentile(latencies, 0.99), 2),
            "mean": round(statistics.fmean(latencies), 2),
        },
        "throughput": {
            "jobs": throughput_jobs,
            "in_flight": window,
            "jobs_per_s": round(throughput_jobs / elapsed, 1),
            "verified": sum(v.status == "verified" for v in verdicts),
            "replicas_per_job": round(statistics.fmean(v.replicas for v in verdicts), 3),
            # CPU per job is steadier than rates on a shared machine (LIMITS.md).
            "cpu_ms_per_job": {
                name: round(seconds / throughput_jobs * 1000, 2)
                for name, seconds in sorted(cpu.items(), key=lambda item: -item[1])
            }
            | {"total": round(sum(cpu.values()) / throughput_jobs * 1000, 2)},
        },
    } | ({"profile": {name: summarize(path) for name, path in raw.items()}} if raw else {})


QUESTIONS = [
    "What is the weather like in Paris tomorrow?",
    "Set a timer for ten minutes.",
    "Translate good morning into Spanish.",
    "I want to speak to a human agent right now.",
    "What does the word ephemeral mean?",
    "Transfer fifty dollars to my savings account.",
    "Play some relaxing music.",
    "Remind me to call my mother tonight.",
    "How many calories are in an apple?",
    "Book a table for two at an Italian restaurant.",
    "Cancel my subscription please.",
    "Tell me a joke about computers.",
]


def speech_sample(folder: Path, sentences: int) -> tuple[Path, str]:
    """A WAV of the first `sentences` known sentences spoken with pauses, and its text."""
    spoken = speech.SENTENCES[:sentences]
    return speech.long_speech(spoken, folder / f"speech-{sentences}.wav"), " ".join(spoken)


def speech_pipeline(settings: Settings, wav: Path, spoken: str, runs: int) -> dict[str, Any]:
    """Whisper base through the pipeline (redundancy 1, one chunk) against the same model
    called directly, on the same file in the same run: real-time factors and their ratio."""
    audio_s = speech.duration_s(wav)
    data = wav.read_bytes()
    manifest = load_manifest(settings.models_dir)
    direct = WhisperRuntime.from_manifest(
        settings.models_dir, manifest.variant_for(WHISPER_BASE, "cpu-int8"), threads=1
    )
    direct.transcribe(data, None)  # warm-up
    direct_s = []
    for _ in range(runs):
        started = time.perf_counter()
        direct.transcribe(data, None)
        direct_s.append(time.perf_counter() - started)
    through = [asyncio.run(transcribe_once(settings, data)) for _ in range(runs + 1)][1:]
    pipeline_s = [elapsed for elapsed, _ in through]
    direct_rtf = statistics.median(direct_s) / audio_s
    pipeline_rtf = statistics.median(pipeline_s) / audio_s
    return {
        "audio_s": round(audio_s, 2),
        "runs": runs,
        "direct_rtf": round(direct_rtf, 4),
        "pipeline_rtf": round(pipeline_rtf, 4),
        "pipeline_vs_direct": round(pipeline_rtf / direct_rtf, 3),
        "wer": round(word_error_rate(spoken, through[-1][1].transcript.text), 4)
        if through[-1][1].transcript
        else None,
    }


def _fleet_run(
    settings: Settings, nodes: int, started: list[str], work: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run `work` against a fresh fleet of `nodes` single-thread nodes."""
    with Fleet(
        settings, nodes=nodes, log_dir=Path(tempfile.mkdtemp(prefix="cortensor-bench-"))
    ) as fleet:
        started.extend(fleet.wait_ready())
        return work()


def signing_cost(rounds: int = 2000) -> dict[str, Any]:
    """What signatures cost: µs to sign and to check (header decoding included, as the
    guard does) a typical embed result, one sentence's 384 numbers; and per job, where
    each of the k replicas is signed by its node and checked by the guard once."""
    rng = random.Random(7)
    vector = [rng.uniform(-0.2, 0.2) for _ in range(384)]
    result = InferenceResult(
        assignment_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        node_id="bench-node",
        model="all-MiniLM-L6-v2",
        hw_class="cpu-int8",
        precision="int8",
        embeddings=[vector],
    )
    payload = result.model_dump_json().encode()
    key = Ed25519PrivateKey.generate()
    public = public_bytes(key)
    headers = signature_headers(sign(key, payload))

    def median_us(step: Callable[[], object]) -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6

    sign_us = median_us(lambda: signature_headers(sign(key, payload)))
    verify_us = median_us(lambda: refusal(public, payload, headers))
    return {
        "payload_bytes": len(payload),
        "sign_us": round(sign_us, 1),
        "verify_us": round(verify_us, 1),
        "per_job_us": {f"redundancy_{k}": round(k * (sign_us + verify_us), 1) for k in (1, 3)},
    }


REDUNDANCIES: tuple[Redundancy, ...] = (1, 3, "auto")
"""`auto` last: by then the nodes have the history that steady state means."""

GENERATE_TOKENS = 64
"""New tokens per prompt in the generate section's speed and fidelity figures."""
SECTIONS = (
    "embed",
    "fidelity",
    "speech",
    "long",
    "split",
    "signing",
    "scale",
    "memory",
    "generate",
)
"""Every section runs by default; `memory` (100,000 jobs through a fleet) takes the
longest, some ten minutes here."""


def _met(value: float, target: float, *, at_most: bool) -> dict[str, Any]:
    return {
        "value": value,
        "target": f"{'<=' if at_most else '>='} {target}",
        "met": value <= target if at_most else value >= target,
    }


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """Each figure the benchmark has a target for, beside it, from the sections run."""
    out: dict[str, Any] = {}
    if "pipeline" in report:
        runs = {str(r["redundancy"]): r for r in report["pipeline"]["runs"]}
        direct = report["direct_int8_per_s"]["single_2_threads"]
        k1, k3 = runs["1"], runs["3"]
        ratio = round(k1["throughput"]["jobs_per_s"] / direct, 3)
        out["k1_throughput_vs_direct_2_threads"] = _met(ratio, 0.5, at_most=False)
        cpu1 = k1["throughput"]["cpu_ms_per_job"]["total"]
        out["k1_cpu_ms_per_job"] = _met(cpu1, 5.0, at_most=True)
        out["k3_p50_ms"] = _met(k3["latency_ms"]["p50"], 15.0, at_most=True)
        out["k3_p99_ms"] = _met(k3["latency_ms"]["p99"], 22.0, at_most=True)
        cpu3 = k3["throughput"]["cpu_ms_per_job"]["total"]
        out["k3_cpu_ms_per_job"] = _met(cpu3, 12.0, at_most=True)
        if "auto" in runs:
            auto = runs["auto"]["throughput"]
            out["auto"] = {
                "replicas_per_job": auto["replicas_per_job"],
                "jobs_per_s": auto["jobs_per_s"],
            }
    if "scale" in report:
        scale = report["scale"]
        worst = max(scale["routing"][f"redundancy_{k}"]["p99_ms"] for k in (1, 3))
        out["routing_10000_nodes_p99_ms"] = _met(worst, 1.0, at_most=True)
        rate = min(scale["guard"][f"redundancy_{k}"]["results_per_s"] for k in (1, 3))
        out["guard_results_per_s"] = _met(rate, 2000.0, at_most=False)
        for node in scale["node_memory"]:
            limit = 300.0 if node["models"] == EMBED_MODEL else 500.0
            rss = max(node["rss_mb_ready"], node["rss_mb_after_jobs"])
            out[f"node_rss_mb_{node['models']}"] = _met(rss, limit, at_most=True)
    if "split" in report:
        out["split_two_vs_one"] = _met(report["split"]["two_vs_one"], 0.55, at_most=True)
    return out


def main(
    latency_jobs: int = typer.Option(200, help="Sequential jobs for latency."),
    throughput_jobs: int = typer.Option(1000, help="Jobs for throughput."),
    window: int = typer.Option(64, help="Jobs in flight for throughput."),
    nodes: int = typer.Option(3, help="Honest nodes in the embedding fleet."),
    speech_runs: int = typer.Option(3, help="Runs of each speech measurement."),
    memory_jobs: int = typer.Option(100_000, help="Jobs through the fleet in `memory`."),
    only: str = typer.Option(",".join(SECTIONS), help="Sections to run, comma-separated."),
    profile: str = typer.Option(
        "",
        help="Sample the fleet's processes with py-spy during the throughput runs; the raw"
        " files go here and a summary into the JSON.",
    ),
) -> None:
    """Run the benchmark on a throwaway namespace and database; print JSON."""
    sections = [name.strip() for name in only.split(",") if name.strip()]
    spied = Path(profile) if profile else None
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise typer.BadParameter(f"unknown sections {sorted(unknown)}; use {', '.join(SECTIONS)}")
    base = Settings()
    suffix = os.urandom(4).hex()
    settings = Settings(
        namespace=f"bench{suffix}",
        database_url=base.database_url.rsplit("/", 1)[0] + f"/cortensor_bench_{suffix}",
        models_dir=base.models_dir,
    )
    report: dict[str, Any] = {"cpus": os.cpu_count()}
    folder = Path(tempfile.mkdtemp(prefix="cortensor-bench-speech-"))
    long_wav, long_text = speech_sample(folder, 20)
    if "fidelity" in sections:
        report["int8_vs_fp32"] = fidelity.measure(
            settings.models_dir,
            sentences=sentences(100),
            questions=QUESTIONS,
            wav=long_wav.read_bytes(),
            audio_s=speech.duration_s(long_wav),
            spoken=long_text,
        )
    if "signing" in sections:
        report["signing"] = signing_cost()
    if "embed" in sections:
        texts = sentences(320)
        report["direct_int8_per_s"] = {
            "single_1_thread": round(direct_rate(settings, 1), 1),
            "single_2_threads": round(direct_rate(settings, 2), 1),
            # What a node's shared calls can reach: the ceiling of the pipeline.
            "batch_16_2_threads": round(fidelity.batched_rate(settings, 2, 16, texts=texts), 1),
        }
    if "long" in sections:
        report["long_file"] = bench_speech.long_file(settings, long_wav, long_text, speech_runs)
    if "scale" in sections:
        report["scale"] = {
            "routing": bench_scale.routing(),
            "guard": bench_scale.guard_rate(),
            "node_memory": [
                bench_scale.node_memory(EMBED_MODEL),
                bench_scale.node_memory(WHISPER_BASE),
            ],
        }
    if "memory" in sections:
        report["service_memory"] = bench_scale.service_memory(jobs=memory_jobs)
    if "generate" in sections:
        report["generate"] = {
            "speed_and_fidelity": bench_generate.generation_figures(
                settings.models_dir, bench_generate.PROMPTS, GENERATE_TOKENS
            ),
            "comparator_margins": generation_margins.margins(settings.models_dir),
        }
    migrate.upgrade(settings)
    asyncio.run(setup_brokers(settings))
    node_ids: list[str] = []
    try:
        if "embed" in sections:
            report["pipeline"] = _fleet_run(
                settings,
                nodes,
                node_ids,
                lambda: {
                    "nodes": nodes,
                    "runs": [
                        asyncio.run(
                            pipeline(settings, k, latency_jobs, throughput_jobs, window, spied)
                        )
                        for k in REDUNDANCIES
                    ],
                },
            )
        if "speech" in sections:
            short_wav, short_text = speech_sample(folder, 5)
            report["speech_pipeline"] = _fleet_run(
                settings,
                1,
                node_ids,
                lambda: speech_pipeline(settings, short_wav, short_text, speech_runs),
            )
        if "split" in sections:
            report["split"] = bench_speech.split_speedup(
                settings, long_wav, long_text, speech_runs, node_ids
            )
    finally:
        asyncio.run(teardown_brokers(settings, [(n, "cpu-int8") for n in set(node_ids)]))
        migrate.drop_database(settings)
    report["targets"] = targets(report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
