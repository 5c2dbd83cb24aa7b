"""Scale figures for ops/bench: one routing decision among many nodes, the guard's
validation rate, a node's resident memory per model, and the router's and guard's
memory over many jobs. Each function returns a dict of figures and runs in bounded
time at its default sizes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import cProfile
import gc
import hashlib
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import structlog
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortensor.adapters import jetstream, memory
from cortensor.adapters.ledger import migrate
from cortensor.adapters.ledger.keys import bind_key
from cortensor.adapters.ledger.router import NodeStats, RouterLedger
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.adapters.topology import Topology
from cortensor.catalog import (
    EMBED_MODEL,
    EMBEDDING_DIM,
    HW_CLASSES,
    PRECISION,
    WHISPER_BASE,
    WHISPER_TINY_EN,
)
from cortensor.client import Client
from cortensor.protocol.replication import ESTABLISHED_STREAK
from cortensor.protocol.signing import public_bytes, sign, signature_headers
from cortensor.protocol.units import NewJob, assignments_for, whole_job
from cortensor.schemas import InferenceResult, JobRequest, NodeHeartbeat, utcnow
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from cortensor.tools import credentials, speech
from cortensor.tools.fleet import Fleet
from cortensor.tools.measure import component_of, percentile, sentences

ROUTING_TARGET_MS = 1.0


def _fleet_beats(nodes: int, rng: random.Random) -> list[NodeHeartbeat]:
    """Heartbeats of a mixed fleet: every hardware class, most nodes serving the
    embedding model, some speech models, a few draining."""
    started = utcnow()
    beats = []
    for i in range(nodes):
        hw_class = rng.choice(HW_CLASSES)
        models = [EMBED_MODEL] if rng.random() < 0.8 else []
        if rng.random() < 0.3:
            models.append(rng.choice((WHISPER_BASE, WHISPER_TINY_EN)))
        if not models:
            models = [WHISPER_BASE]
        capacity = rng.choice((1, 2, 4, 8))
        beats.append(
            NodeHeartbeat(
                node_id=f"scale-{i:05d}",
                hw_class=hw_class,
                precision=PRECISION[hw_class],
                tasks=sorted({"embed" if m == EMBED_MODEL else "transcribe" for m in models}),
                models=models,
                capacity=capacity,
                inflight=rng.randint(0, capacity),
                processed=rng.randint(0, 10_000),
                status="draining" if rng.random() < 0.02 else "up",
                started_at=started,
            )
        )
    return beats


def _fleet_stats(beats: list[NodeHeartbeat], rng: random.Random) -> dict[str, NodeStats]:
    """Ledger figures for the fleet: varied scores, load, trust and streaks."""
    stats = {}
    for beat in beats:
        trust = rng.choices(("active", "probation", "quarantined"), (0.9, 0.07, 0.03))[0]
        streaks = {m: rng.choice((0, 3, ESTABLISHED_STREAK, 50, 400)) for m in beat.models}
        stats[beat.node_id] = NodeStats(
            score=rng.uniform(0.1, 1.0),
            outstanding=rng.randint(0, beat.capacity),
            trust=trust,
            streaks=streaks,
            offences=1 if rng.random() < 0.01 else 0,
        )
    return stats


def routing_router(nodes: int = 10_000, seed: int = 11) -> tuple[Router, dict[str, NodeStats]]:
    """A router on in-memory twins whose registry holds `nodes` recorded nodes, heard
    from their heartbeats just now, and the ledger's figures for each (given to it)."""
    settings = Settings(namespace="benchscale", node_ttl_s=3600.0)
    topology = Topology(settings.namespace)
    ports, _ = memory.router_ports(
        memory.MemoryLedger(),
        memory.MemoryBroker(topology),
        memory.MemoryNats(topology),
        topology,
        keys=memory.MemoryKeys(),
    )
    router = Router(settings, ports, seed=seed)
    rng = random.Random(seed)
    beats = _fleet_beats(nodes, rng)
    now = time.monotonic()
    for beat in beats:
        router.registry.observe(beat, now)
        router.registry.recorded(beat.node_id)
    stats = _fleet_stats(beats, rng)
    router.registry.update_stats(stats)
    return router, stats


def routing(
    nodes: int = 10_000,
    decisions: int = 2_000,
    refresh_every: int = 500,
    hw_class: str = "any",
    seed: int = 11,
) -> dict[str, Any]:
    """Time one routing decision (Router.plan: the live pool, then the plan) for
    single-sentence embed jobs at redundancy 1 and 3 among `nodes` nodes. The registry
    is refreshed with the same ledger figures every `refresh_every` decisions (untimed),
    as the router does every Settings.registry_refresh_s."""
    router, stats = routing_router(nodes, seed)
    texts = sentences(decisions)
    out: dict[str, Any] = {"nodes": nodes, "hw_class": hw_class, "target_p99_ms": ROUTING_TARGET_MS}
    for k in (1, 3):
        times = []
        failed = 0
        for i, text in enumerate(texts):
            if i % refresh_every == 0:
                router.registry.update_stats(stats)
            request = JobRequest(inputs=[text], redundancy=k, hw_class=hw_class)
            job = whole_job(request, utcnow() + timedelta(seconds=request.deadline_s))
            start = time.perf_counter()
            planned = router.plan(job, job.redundancy)
            times.append((time.perf_counter() - start) * 1000)
            failed += isinstance(planned, str)
        pool = len(router.live(("cpu-fp32", "cpu-int8", "cuda-fp16", "cuda-int8"), EMBED_MODEL))
        out[f"redundancy_{k}"] = {
            "decisions": decisions,
            "pool": pool,
            "unplaced": failed,
            "p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(percentile(times, 0.99), 3),
            "max_ms": round(max(times), 3),
        }
    out["meets_target"] = all(out[f"redundancy_{k}"]["p99_ms"] <= ROUTING_TARGET_MS for k in (1, 3))
    return out


def throwaway_settings(prefix: str = "scale") -> Settings:
    """Admin settings on a fresh namespace and database name (nothing created yet)."""
    base = Settings()
    suffix = os.urandom(4).hex()
    return Settings(
        namespace=f"{prefix}{suffix}",
        database_url=base.database_url.rsplit("/", 1)[0] + f"/cortensor_{prefix}_{suffix}",
        models_dir=base.models_dir,
    )


@contextlib.contextmanager
def throwaway(
    prefix: str = "scale", nodes: list[tuple[str, str]] | None = None
) -> Iterator[Settings]:
    """A migrated ledger and declared brokers on a fresh namespace, removed after use
    with the queues of `nodes` ((node id, hardware class), filled in by the caller)."""
    settings = throwaway_settings(prefix)
    migrate.upgrade(settings)
    try:
        asyncio.run(setup_brokers(settings))
        yield settings
    finally:
        asyncio.run(teardown_brokers(settings, nodes or []))
        migrate.drop_database(settings)


def _node_key(node_id: str) -> Ed25519PrivateKey:
    """A bench node's key, the same for the same id."""
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"cortensor bench node " + node_id.encode()).digest()
    )


async def _open_signed_jobs(
    settings: Settings, nodes: int, jobs: int, k: int
) -> list[tuple[str, bytes, dict[str, str]]]:
    """Register `nodes` node keys, open `jobs` single-sentence embed jobs of redundancy
    k with their assignments, and return each replica's signed result as (subject,
    payload, headers). The replicas of a job carry the same vector: they agree."""
    topology = Topology(settings.namespace)
    ids = [f"bench-{i:04d}" for i in range(nodes)]
    keys = {n: _node_key(n) for n in ids}
    ledger = await RouterLedger.connect(settings.asyncpg_dsn)
    try:
        started = utcnow()
        await ledger.upsert_nodes(
            [
                NodeHeartbeat(
                    node_id=n,
                    hw_class="cpu-int8",
                    precision="int8",
                    tasks=["embed"],
                    models=[EMBED_MODEL],
                    capacity=8,
                    inflight=0,
                    processed=0,
                    started_at=started,
                )
                for n in ids
            ]
        )
        async with ledger.pool.acquire() as db:
            for n in ids:
                await bind_key(db, n, public_bytes(keys[n]))
        rng = random.Random(5)
        texts = sentences(jobs)
        opened: list[NewJob] = []
        job_ids = []
        for i, text in enumerate(texts):
            request = JobRequest(inputs=[text], redundancy=k)
            unit = whole_job(request, started + timedelta(seconds=600))
            chosen = rng.sample(ids, k)
            made = assignments_for(unit, [(n, "cpu-int8") for n in chosen], unit.deadline_at)
            opened.append(NewJob(unit, request.created_at, "running", made))
            job_ids.append(unit.job_id)
            if i % 1000 == 999 or i == jobs - 1:
                await ledger.open_jobs(opened)
                opened = []
        rows = await ledger.pool.fetch(
            "SELECT assignment_id, job_id, node_id FROM assignments"
            " WHERE job_id = ANY($1::uuid[]) ORDER BY job_id",
            job_ids,
        )
        await ledger.mark_sent([r["assignment_id"] for r in rows])
    finally:
        await ledger.close()
    vector = [rng.uniform(-0.2, 0.2) for _ in range(EMBEDDING_DIM[EMBED_MODEL])]
    out = []
    for r in rows:
        result = InferenceResult(
            assignment_id=r["assignment_id"],
            job_id=r["job_id"],
            node_id=r["node_id"],
            model=EMBED_MODEL,
            hw_class="cpu-int8",
            precision="int8",
            embeddings=[vector],
        )
        payload = result.model_dump_json().encode()
        subject = topology.results_subject(str(r["job_id"]), node_id=r["node_id"])
        headers = signature_headers(sign(keys[r["node_id"]], payload))
        out.append((subject, payload, {**headers, jetstream.MSG_ID_HEADER: str(result.result_id)}))
    return out


async def _publish_all(
    settings: Settings, messages: list[tuple[str, bytes, dict[str, str]]], window: int = 1000
) -> float:
    """Publish messages into the results stream, acks pipelined `window` deep; seconds."""
    nc = await jetstream.connect_as(settings, name="bench-publisher")
    js = nc.jetstream()
    gate = asyncio.Semaphore(window)
    start = time.perf_counter()
    try:

        async def one(subject: str, payload: bytes, headers: dict[str, str]) -> None:
            async with gate:
                await js.publish(subject, payload, headers=headers)

        await asyncio.gather(*(one(*m) for m in messages))
    finally:
        await nc.drain()
    return time.perf_counter() - start


async def _decided(settings: Settings) -> int:
    db = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        return int(await db.fetchval("SELECT count(*) FROM verdicts"))
    finally:
        await db.close()


async def _guard_run(settings: Settings, jobs: int, timeout_s: float) -> dict[str, Any]:
    """Run one guard in this process on the stored results until `jobs` verdicts are in
    the ledger; its wall time and this process's CPU time meanwhile."""
    from cortensor.adapters.live import guard_ports
    from cortensor.services.guard.service import Guard

    stop = asyncio.Event()
    db = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        async with guard_ports(settings, name="bench-guard") as ports:
            guard = Guard(settings, ports)
            cpu = time.process_time()
            start = time.perf_counter()
            running = asyncio.create_task(guard.run(stop))
            decided = 0
            while decided < jobs and time.perf_counter() - start < timeout_s:
                await asyncio.sleep(0.05)
                decided = int(await db.fetchval("SELECT count(*) FROM verdicts"))
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
            stop.set()
            await running
    finally:
        await db.close()
    return {"decided": decided, "elapsed_s": elapsed, "cpu_s": cpu}


@contextlib.contextmanager
def _service_logging() -> Iterator[None]:
    """Log as a service process does (INFO and up, to stderr) while a service runs in this
    process, so that its debug lines cost what they cost there and stdout stays JSON."""
    before = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        yield
    finally:
        structlog.configure(**before)


def guard_rate(
    jobs: int = 4000, nodes: int = 50, timeout_s: float = 120.0, profile: Path | None = None
) -> dict[str, Any]:
    """The guard's validation rate: `jobs` single-sentence embed jobs of redundancy 1 and
    3 opened with their assignments in a throwaway ledger, every replica's signed result
    published into the real results stream, then one guard (the real service on the
    real adapters, in this process) run from start until every verdict is in the
    ledger. Results/s, jobs/s, the guard's CPU per result; with `profile`, a cProfile of
    the guard's run is written there (one file per redundancy)."""
    out: dict[str, Any] = {"jobs": jobs, "nodes": nodes, "target_results_per_s": 2000}
    for k in (1, 3):
        with throwaway("scaleguard") as settings, _service_logging():
            messages = asyncio.run(_open_signed_jobs(settings, nodes, jobs, k))
            publish_s = asyncio.run(_publish_all(settings, messages))
            if profile is not None:
                profiler = cProfile.Profile()
                run = profiler.runcall(asyncio.run, _guard_run(settings, jobs, timeout_s))
                profiler.dump_stats(f"{profile}.k{k}")
            else:
                run = asyncio.run(_guard_run(settings, jobs, timeout_s))
        results = len(messages)
        out[f"redundancy_{k}"] = {
            "results": results,
            "published_per_s": round(results / publish_s, 1),
            "decided": run["decided"],
            "results_per_s": round(results * run["decided"] / jobs / run["elapsed_s"], 1),
            "jobs_per_s": round(run["decided"] / run["elapsed_s"], 1),
            "guard_cpu_ms_per_result": round(run["cpu_s"] / results * 1000, 3),
            "guard_cpu_share": round(run["cpu_s"] / run["elapsed_s"], 2),
        }
    return out


async def _guard_heap(
    settings: Settings, jobs: int, rounds: int, k: int, top: int
) -> dict[str, Any]:
    from cortensor.adapters.live import guard_ports
    from cortensor.services.guard.service import Guard

    stop = asyncio.Event()
    db = await asyncpg.connect(settings.asyncpg_dsn)
    series = []
    try:
        async with guard_ports(settings, name="bench-guard") as ports:
            guard = Guard(settings, ports)
            running = asyncio.create_task(guard.run(stop))
            tracemalloc.start(8)
            first: tracemalloc.Snapshot | None = None
            last: tracemalloc.Snapshot | None = None
            for n in range(1, rounds + 1):
                messages = await _open_signed_jobs(settings, 20, jobs, k)
                await _publish_all(settings, messages)
                # Polled: the verdicts are rows in the ledger, written by the guard.
                while int(await db.fetchval("SELECT count(*) FROM verdicts")) < n * jobs:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                gc.collect()
                last = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__)]
                )
                if first is None:
                    first = last
                series.append(
                    {
                        "jobs_done": n * jobs,
                        "traced_mb": round(tracemalloc.get_traced_memory()[0] / 1e6, 2),
                    }
                )
            stop.set()
            await running
            tracemalloc.stop()
    finally:
        await db.close()
    if first is None or last is None:
        raise ValueError("rounds must be at least 1")
    growth = [
        {
            "where": str(stat.traceback[0]),
            "kb": round(stat.size_diff / 1e3, 1),
            "count": stat.count_diff,
        }
        for stat in last.compare_to(first, "lineno")[:top]
    ]
    return {"series": series, "top_growth_after_first_round": growth}


def guard_heap(jobs: int = 2000, rounds: int = 5, k: int = 1, top: int = 12) -> dict[str, Any]:
    """Where the guard's Python heap grows: one guard (the real service on the real
    adapters, in this process, traced by tracemalloc) decides `rounds` rounds of `jobs`
    jobs of redundancy k; the traced memory after each round, and the lines whose
    allocations grew most between the first round and the last."""
    with throwaway("scaleheap") as settings, _service_logging():
        return asyncio.run(_guard_heap(settings, jobs, rounds, k, top))


NODE_RSS_TARGET_MB = {EMBED_MODEL: 300, WHISPER_BASE: 500}


def _tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of a process and its children, in MB (10^6 bytes)."""
    total_kb = 0
    for p in _tree(pid):
        try:
            status = (Path("/proc") / str(p) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return round(total_kb * 1024 / 1e6, 1)


def _job_of(model: str, text: str, wav: bytes | None) -> JobRequest:
    if wav is None:
        return JobRequest(inputs=[text], redundancy=1, model=model)
    return JobRequest(
        task="transcribe",
        model=model,
        audio=base64.b64encode(wav).decode("ascii"),
        redundancy=1,
        deadline_s=300,
    )


def node_memory(
    model: str | None = EMBED_MODEL, jobs: int = 20, ready_timeout_s: float = 300.0
) -> dict[str, Any]:
    """Resident memory of a real node process serving only `model` (`--models`; None:
    every model its class serves, the default of `cortensor node`), on a fleet of its
    own (router, guard, this node) in a throwaway ledger: once it is admitted (its
    known-answer probes passed), and after `jobs` jobs of redundancy 1 for `model`
    (embeddings when None)."""
    wav = None
    if model is not None and model != EMBED_MODEL:
        folder = Path(tempfile.mkdtemp(prefix="cortensor-scale-speech-"))
        wav = speech.long_speech(speech.SENTENCES[:2], folder / "two.wav").read_bytes()
    started: list[tuple[str, str]] = []
    with throwaway("scalenode", started) as settings:
        log_dir = Path(tempfile.mkdtemp(prefix="cortensor-scale-node-"))
        args = ["--models", model] if model is not None else []
        with Fleet(settings, nodes=0, extra_nodes=[args], log_dir=log_dir) as fleet:
            started.append((fleet.extra_node_id(1), credentials.local_hw_class(settings)))
            fleet.wait_ready(ready_timeout_s, admitted=1)
            pid = _service_pids(settings.namespace)["node"]
            ready = rss_mb(pid)

            async def run() -> list[str]:
                async with Client(settings) as client:
                    return [
                        (
                            await client.run(_job_of(model or EMBED_MODEL, t, wav), timeout_s=300)
                        ).status
                        for t in sentences(jobs)
                    ]

            statuses = asyncio.run(run())
            after = rss_mb(pid)
            fleet.wait_idle()
    target = NODE_RSS_TARGET_MB.get(model or "")
    return {
        "models": model or "all its class serves",
        "variant": "cpu-int8",
        "rss_mb_ready": ready,
        "rss_mb_after_jobs": after,
        "jobs": jobs,
        "verified": statuses.count("verified"),
        "target_mb": target,
        "meets_target": None if target is None else max(ready, after) <= target,
    }


def _service_pids(namespace: str) -> dict[str, int]:
    """The pid of the router, the guard and a node of a fleet in `namespace`."""
    pids = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            role = component_of(proc.name, namespace)
            if role is not None:
                pids[role] = int(proc.name)
    return pids


def _growth_per_10k(samples: list[dict[str, Any]], role: str) -> float:
    """Least-squares slope of `role`'s RSS against jobs done, past the first sample
    (warm-up), in MB per 10,000 jobs."""
    points = [(s["jobs_done"], s[f"{role}_mb"]) for s in samples[1:]]
    if len(points) < 2:
        return 0.0
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0
    return round(slope * 10_000, 2)


def service_memory(
    jobs: int = 100_000, nodes: int = 2, window: int = 64, redundancy: int = 1
) -> dict[str, Any]:
    """The router's and the guard's resident memory while `jobs` single-sentence embed
    jobs go through a fleet (router, guard, `nodes` real nodes) in a throwaway ledger,
    `window` in flight: sampled before the first job and after every tenth of them."""
    started: list[tuple[str, str]] = []
    samples: list[dict[str, Any]] = []
    with throwaway("scalemem", started) as settings:
        log_dir = Path(tempfile.mkdtemp(prefix="cortensor-scale-mem-"))
        with Fleet(settings, nodes=nodes, log_dir=log_dir) as fleet:
            hw_class = credentials.local_hw_class(settings)
            started.extend((n, hw_class) for n in fleet.wait_ready())
            pids = _service_pids(settings.namespace)

            def sample(done: int, elapsed: float) -> None:
                samples.append(
                    {
                        "jobs_done": done,
                        "elapsed_s": round(elapsed, 1),
                        "router_mb": rss_mb(pids["router"]),
                        "guard_mb": rss_mb(pids["guard"]),
                    }
                )

            async def run() -> list[str]:
                statuses: list[str] = []
                tenth = max(jobs // 10, 1)
                gate = asyncio.Semaphore(window)
                async with Client(settings) as client:

                    async def one(text: str) -> str:
                        async with gate:
                            job = JobRequest(inputs=[text], redundancy=redundancy)
                            return (await client.run(job, timeout_s=120)).status

                    start = time.perf_counter()
                    sample(0, 0.0)
                    for first in range(0, jobs, tenth):
                        texts = sentences(min(first + tenth, jobs))[first:]
                        statuses += await asyncio.gather(*(one(t) for t in texts))
                        sample(len(statuses), time.perf_counter() - start)
                return statuses

            statuses = asyncio.run(run())
            fleet.wait_idle()
    elapsed = samples[-1]["elapsed_s"]
    return {
        "jobs": jobs,
        "nodes": nodes,
        "redundancy": redundancy,
        "verified": statuses.count("verified"),
        "jobs_per_s": round(jobs / elapsed, 1) if elapsed else None,
        "samples": samples,
        "router_mb_first_last": [samples[0]["router_mb"], samples[-1]["router_mb"]],
        "guard_mb_first_last": [samples[0]["guard_mb"], samples[-1]["guard_mb"]],
        "router_mb_per_10k_jobs_after_warmup": _growth_per_10k(samples, "router"),
        "guard_mb_per_10k_jobs_after_warmup": _growth_per_10k(samples, "guard"),
    }


SCALE_FIGURES = ("routing", "guard", "node_memory", "service_memory")
DIAGNOSTICS = ("guard_heap",)
"""Run only when asked for (--only guard_heap)."""


def main(
    only: str = typer.Option(",".join(SCALE_FIGURES), help="Figures to measure, comma-separated."),
    quick: bool = typer.Option(False, help="Small sizes: a check that each figure runs."),
) -> None:
    """Measure the scale figures on throwaway namespaces and databases; print JSON."""
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = set(wanted) - set(SCALE_FIGURES) - set(DIAGNOSTICS)
    if unknown:
        known = ", ".join(SCALE_FIGURES + DIAGNOSTICS)
        raise typer.BadParameter(f"unknown figures {sorted(unknown)}; use {known}")
    report: dict[str, Any] = {"cpus": os.cpu_count(), "quick": quick}
    if "routing" in wanted:
        report["routing"] = routing(decisions=200) if quick else routing()
    if "guard" in wanted:
        report["guard"] = guard_rate(jobs=300) if quick else guard_rate()
    if "node_memory" in wanted:
        jobs = 3 if quick else 20
        report["node_memory"] = [node_memory(EMBED_MODEL, jobs), node_memory(WHISPER_BASE, jobs)]
    if "service_memory" in wanted:
        report["service_memory"] = service_memory(jobs=1000) if quick else service_memory()
    if "guard_heap" in wanted:
        report["guard_heap"] = guard_heap(jobs=300, rounds=3) if quick else guard_heap()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
