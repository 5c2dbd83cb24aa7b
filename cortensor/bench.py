"""The benchmark behind ops/bench: the pipeline's latency and throughput as ratios to
the model's own speed, measured in the same run on the same machine. Prints JSON."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from cortensor.client import Client
from cortensor.fleet import Fleet
from cortensor.ledger import migrate
from cortensor.models.manifest import load_manifest
from cortensor.provision import setup_brokers, teardown_brokers
from cortensor.runtimes.embedding import EmbeddingRuntime
from cortensor.schemas import JobRequest
from cortensor.settings import Settings


def _sentences(n: int) -> list[str]:
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "network",
        "guard",
        "node",
        "router",
        "ledger",
        "vector",
        "quorum",
    ]
    return [
        f"Sentence {i}: {' '.join(words[(i + j) % len(words)] for j in range(8))}."
        for i in range(n)
    ]


def direct_rate(settings: Settings, threads: int, n: int = 300, rounds: int = 5) -> float:
    """Single-sentence int8 embeddings per second, called directly in this process
    (median of `rounds` rounds: the rate moves with whatever else the machine does)."""
    manifest = load_manifest(settings.models_dir)
    runtime = EmbeddingRuntime.from_manifest(
        settings.models_dir, manifest.variant_for("all-MiniLM-L6-v2", "cpu-int8"), threads=threads
    )
    texts = _sentences(n)
    for t in texts[:20]:
        runtime.embed([t])
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for t in texts:
            runtime.embed([t])
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


_SERVERS = {b"beam.smp": "rabbitmq", b"nats-server": "nats", b"postgres": "postgresql"}
_TICK = os.sysconf("SC_CLK_TCK")


def _component(pid: str, namespace: str) -> str | None:
    """Which part of the system a process is: a fleet process of this namespace, a server."""
    proc = Path("/proc") / pid
    try:
        cmdline = (proc / "cmdline").read_bytes()
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for marker, name in _SERVERS.items():
        if marker in cmdline:
            return name
    if f"CORTENSOR_NAMESPACE={namespace}".encode() not in environ:
        return None
    for role in ("router", "guard", "node"):
        if f"cortensor {role}".encode() in cmdline.replace(b"\0", b" "):
            return role
    return None


def cpu_seconds(namespace: str) -> dict[str, float]:
    """CPU seconds used so far by each component (processes of the fleet, the servers)."""
    used: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        component = _component(proc.name, namespace) if proc.name.isdigit() else None
        if component is None:
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[component] = used.get(component, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return used


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def pipeline(
    settings: Settings, k: int, latency_jobs: int, throughput_jobs: int, window: int
) -> dict[str, Any]:
    """Sequential latency and windowed throughput of single-sentence jobs at redundancy k."""
    texts = _sentences(latency_jobs + throughput_jobs + 20)
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

        async def one(text: str) -> str:
            async with gate:
                return (
                    await client.run(JobRequest(inputs=[text], redundancy=k), timeout_s=120)
                ).status

        before, client_before = cpu_seconds(settings.namespace), time.process_time()
        start = time.perf_counter()
        statuses = await asyncio.gather(*(one(t) for t in texts[20 + latency_jobs :]))
        elapsed = time.perf_counter() - start
        after, client_after = cpu_seconds(settings.namespace), time.process_time()
    cpu = {name: after[name] - before.get(name, 0.0) for name in after}
    cpu["client"] = client_after - client_before
    return {
        "redundancy": k,
        "latency_ms": {
            "jobs": latency_jobs,
            "p50": round(statistics.median(latencies), 2),
            "p99": round(_percentile(latencies, 0.99), 2),
            "mean": round(statistics.fmean(latencies), 2),
        },
        "throughput": {
            "jobs": throughput_jobs,
            "in_flight": window,
            "jobs_per_s": round(throughput_jobs / elapsed, 1),
            "verified": statuses.count("verified"),
            # CPU per job is steadier than rates on a shared machine (LIMITS.md).
            "cpu_ms_per_job": {
                name: round(seconds / throughput_jobs * 1000, 2)
                for name, seconds in sorted(cpu.items(), key=lambda item: -item[1])
            }
            | {"total": round(sum(cpu.values()) / throughput_jobs * 1000, 2)},
        },
    }


def main(
    latency_jobs: int = typer.Option(200, help="Sequential jobs for latency."),
    throughput_jobs: int = typer.Option(1000, help="Jobs for throughput."),
    window: int = typer.Option(64, help="Jobs in flight for throughput."),
    nodes: int = typer.Option(3, help="Honest nodes in the fleet."),
) -> None:
    """Run the benchmark on a throwaway namespace and database; print JSON."""
    base = Settings()
    suffix = os.urandom(4).hex()
    settings = Settings(
        namespace=f"bench{suffix}",
        database_url=base.database_url.rsplit("/", 1)[0] + f"/cortensor_bench_{suffix}",
        models_dir=base.models_dir,
    )
    report: dict[str, Any] = {"cpus": os.cpu_count()}
    report["direct_int8_single_sentence_per_s"] = {
        "threads_1": round(direct_rate(settings, 1), 1),
        "threads_2": round(direct_rate(settings, 2), 1),
    }
    migrate.upgrade(settings)
    asyncio.run(setup_brokers(settings))
    node_ids: list[str] = []
    try:
        with Fleet(
            settings, nodes=nodes, log_dir=Path(tempfile.mkdtemp(prefix="cortensor-bench-"))
        ) as fleet:
            node_ids = fleet.wait_ready()
            report["fleet"] = {"nodes": len(node_ids), "logs": str(fleet.log_dir)}
            report["pipeline"] = [
                asyncio.run(pipeline(settings, k, latency_jobs, throughput_jobs, window))
                for k in (1, 3)
            ]
    finally:
        asyncio.run(teardown_brokers(settings, [(n, "cpu-int8") for n in node_ids]))
        migrate.drop_database(settings)
    direct = report["direct_int8_single_sentence_per_s"]
    k1 = report["pipeline"][0]["throughput"]["jobs_per_s"]
    report["ratios"] = {
        "k1_throughput_vs_direct_1_thread": round(k1 / direct["threads_1"], 3),
        "k1_throughput_vs_direct_2_threads": round(k1 / direct["threads_2"], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
