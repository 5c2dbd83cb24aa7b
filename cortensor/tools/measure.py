"""What the benchmarks measure with: the CPU time of the fleet's processes and of the
servers, percentiles, and the benchmark's sentences (short, varied, made up here)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

from cortensor.client import Client
from cortensor.schemas import JobRequest, Verdict
from cortensor.settings import Settings


def sentences(n: int) -> list[str]:
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


_SERVERS = {b"beam.smp": "rabbitmq", b"nats-server": "nats", b"postgres": "postgresql"}
TICK = os.sysconf("SC_CLK_TCK")


def component_of(pid: str, namespace: str) -> str | None:
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
    # `cortensor [--credentials FILE] <role> ...`: the role is the first word after the
    # program's own options.
    argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    program = next((i for i, a in enumerate(argv) if a.endswith("cortensor")), None)
    if program is None:
        return None
    rest = argv[program + 1 :]
    while rest[:1] and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] == "--credentials" else rest[1:]
    role = rest[0] if rest else ""
    return role if role in ("router", "guard", "node") else None


def _processes(namespace: str) -> Iterator[tuple[Path, str]]:
    """Each process of the fleet and of the servers, with the component it is."""
    for proc in Path("/proc").iterdir():
        component = component_of(proc.name, namespace) if proc.name.isdigit() else None
        if component is not None:
            yield proc, component


def cpu_seconds(namespace: str) -> dict[str, float]:
    """CPU seconds used so far by each component (processes of the fleet, the servers)."""
    used: dict[str, float] = {}
    for proc, component in _processes(namespace):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[component] = used.get(component, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return used


def fleet_pids(namespace: str) -> dict[str, list[int]]:
    """The process ids of the fleet's router, guard and nodes (not the servers)."""
    pids: dict[str, list[int]] = {}
    for proc, component in _processes(namespace):
        if component in ("router", "guard", "node"):
            pids.setdefault(component, []).append(int(proc.name))
    return pids


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def transcribe_once(settings: Settings, wav: bytes) -> tuple[float, Verdict]:
    """Seconds from submit to verdict of one transcription at redundancy 1, and its
    verified verdict."""
    job = JobRequest(
        task="transcribe",
        audio=base64.b64encode(wav).decode("ascii"),
        redundancy=1,
        deadline_s=300,
    )
    async with Client(settings) as client:
        started = time.perf_counter()
        verdict = await client.run(job, timeout_s=300)
        elapsed = time.perf_counter() - started
    if verdict.status != "verified":
        raise RuntimeError(f"transcribe job {verdict.status}: {verdict.reason}")
    return elapsed, verdict
