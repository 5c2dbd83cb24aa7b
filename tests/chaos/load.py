"""The load a chaos scenario runs, and what it counts afterwards.

`drive` submits embed jobs through the SDK at a steady rate while the scenario's
disturbances (kills, outages) run beside it, waits until every accepted job has a
verdict or its deadline plus the grace has passed, then counts from the outside: the
verdicts stream (every message, not just the last), the ledger (when each verdict was
published, the reputation events, the nodes' standing) and the fleet's processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from nats.js.errors import NotFoundError

from cortensor.adapters import jetstream
from cortensor.adapters.topology import Topology
from cortensor.catalog import EMBED_MODEL
from cortensor.client import Client
from cortensor.schemas import JobRequest, Verdict
from cortensor.settings import Settings

CHARGES = ("timed_out", "disagreed")
"""Reputation events that count against a node."""


@dataclass(frozen=True)
class Load:
    """How many embed jobs, how fast, with what redundancy and deadline."""

    jobs: int = 150
    rate: float = 10.0
    """Jobs submitted per second."""
    redundancy: int = 3
    deadline_s: float = 60.0
    grace_s: float = 30.0
    """A verdict later than deadline + grace after its submission counts as lost."""


@dataclass
class Submission:
    """One job as the client saw it."""

    job_id: UUID
    at: float
    """Wall-clock time (time.time()) when the client began to submit it."""
    accepted: bool = False
    error: str = ""


@dataclass
class Tally:
    """What a scenario counted; `summary()` is the dict each test prints."""

    scenario: str
    seed: int | None = None
    """The random seed of the scenario's moments (CORTENSOR_CHAOS_SEED replays it)."""
    submitted: int = 0
    accepted: int = 0
    refused: list[str] = field(default_factory=list)
    """Submissions that raised to the caller (type and message)."""
    verdicts: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    """Accepted jobs without a verdict published within deadline + grace."""
    late: int = 0
    """Of the lost: those whose verdict came, but after deadline + grace."""
    duplicates: list[str] = field(default_factory=list)
    """Jobs with more than one verdict of one revision on their subject, or verdicts
    that contradict each other."""
    charges: dict[str, dict[str, int]] = field(default_factory=dict)
    """Reputation events against each node during the run, by kind."""
    excused: set[str] = field(default_factory=set)
    """Nodes the scenario killed: charges for the work they dropped are deserved."""
    quarantined: list[str] = field(default_factory=list)
    """Nodes quarantined during the run (node@model)."""
    quarantined_before: list[str] = field(default_factory=list)
    """Nodes already in quarantine when the run began (admission probes a busy machine
    made late, say): not the scenario's doing, shown for the record."""
    exited: list[str] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    outages: dict[str, float] = field(default_factory=dict)
    """Seconds each server was unreachable, start-up included."""
    peak_mib: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def honest_charged(self) -> dict[str, dict[str, int]]:
        """Charges against nodes that did nothing wrong (every node not excused)."""
        return {n: c for n, c in self.charges.items() if n not in self.excused}

    @property
    def honest_punished(self) -> list[str]:
        """Honest nodes charged, and any node quarantined."""
        quarantined = {q.split("@", 1)[0] for q in self.quarantined}
        return sorted(set(self.honest_charged) | quarantined)

    def summary(self) -> dict[str, Any]:
        """Every figure, JSON-ready."""
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "submitted": self.submitted,
            "accepted": self.accepted,
            "refused": len(self.refused),
            "verdicts": self.verdicts,
            "lost": len(self.lost),
            "late": self.late,
            "duplicates": len(self.duplicates),
            "honest_nodes_charged": len(self.honest_charged),
            "honest_charges": sum(sum(c.values()) for c in self.honest_charged.values()),
            "charges": self.charges,
            "quarantined": self.quarantined,
            "quarantined_before": self.quarantined_before,
            "exited": self.exited,
            "kills": self.kills,
            "outages_s": {k: round(v, 1) for k, v in self.outages.items()},
            "peak_mib": {k: round(v, 1) for k, v in sorted(self.peak_mib.items())},
            "wall_s": round(self.wall_s, 1),
        }

    def report(self) -> str:
        """Print the summary (one line, CHAOS-SUMMARY json) and append it to the file
        CORTENSOR_CHAOS_REPORT names, if any; returns the line."""
        line = "CHAOS-SUMMARY " + json.dumps(self.summary(), sort_keys=True)
        print(line)
        target = os.environ.get("CORTENSOR_CHAOS_REPORT")
        if target:
            with Path(target).open("a") as f:
                f.write(line + "\n")
        return line


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Samples VmHWM (a process's peak resident memory) of named processes every
    `interval` seconds in a thread; `peak_mib` is the largest seen per name (the
    largest single process, for a server with many)."""

    def __init__(self, pids: Callable[[], dict[str, list[int]]], interval: float = 1.0) -> None:
        self._pids = pids
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="vmhwm")
        self.peak_mib: dict[str, float] = {}

    def sample(self) -> None:
        """One sample now."""
        for name, pids in self._pids().items():
            kib = max((_hwm_kib(pid) for pid in pids), default=0)
            self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), kib / 1024)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _texts(n: int) -> list[str]:
    words = ["ledger", "quorum", "vector", "router", "guard", "node", "network", "verdict"]
    return [
        f"Chaos job {i}: {' '.join(words[(i * 7 + j) % len(words)] for j in range(6))}."
        for i in range(n)
    ]


async def submit_all(client: Client, load: Load) -> list[Submission]:
    """Submit `load.jobs` embed jobs at `load.rate` per second, each in a task of its own
    (a slow publish does not hold back the next); a submission that has not returned by
    its job's deadline counts as refused."""
    jobs = [
        JobRequest(
            task="embed",
            model=EMBED_MODEL,
            inputs=[text],
            redundancy=load.redundancy,
            deadline_s=load.deadline_s,
        )
        for text in _texts(load.jobs)
    ]
    submissions = [Submission(job.job_id, 0.0) for job in jobs]
    began = time.monotonic()

    async def one(i: int) -> None:
        await asyncio.sleep(max(began + i / load.rate - time.monotonic(), 0))
        submissions[i].at = time.time()
        try:
            await asyncio.wait_for(client.submit(jobs[i]), load.deadline_s)
        except Exception as exc:
            submissions[i].error = f"{type(exc).__name__}: {exc}"
        else:
            submissions[i].accepted = True

    await asyncio.gather(*(one(i) for i in range(len(jobs))))
    return submissions


async def _ledger(admin: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(admin.asyncpg_dsn, timeout=5)


async def published_at(admin: Settings, job_ids: list[UUID]) -> dict[UUID, float]:
    """When each job's verdict was recorded as published (epoch seconds)."""
    db = await _ledger(admin)
    try:
        rows = await db.fetch(
            "SELECT job_id, extract(epoch FROM published_at) AS at FROM verdicts"
            " WHERE job_id = ANY($1::uuid[]) AND published_at IS NOT NULL",
            job_ids,
        )
    finally:
        await db.close()
    return {row["job_id"]: float(row["at"]) for row in rows}


async def await_verdicts(admin: Settings, subs: list[Submission], load: Load) -> None:
    """Poll the ledger until every accepted job's verdict is published, or the last
    deadline plus the grace has passed (a ledger that does not answer is asked again)."""
    wanted = [s.job_id for s in subs if s.accepted]
    until = max((s.at for s in subs), default=time.time()) + load.deadline_s + load.grace_s
    while time.time() < until:
        try:
            if len(await published_at(admin, wanted)) >= len(wanted):
                return
        except (OSError, asyncpg.PostgresError, TimeoutError):
            pass
        await asyncio.sleep(1.0)


async def stream_verdicts(admin: Settings) -> dict[UUID, list[Verdict]]:
    """Every verdict message in the namespace's verdicts stream, by job (parts left out),
    in stream order."""
    topology = Topology(admin.namespace)
    nc = await jetstream.connect_as(admin, name="chaos-tally")
    found: dict[UUID, list[Verdict]] = {}
    try:
        js = nc.jetstream()
        info = await js.stream_info(topology.verdicts_stream)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                raw = await js.get_msg(topology.verdicts_stream, seq)
            except NotFoundError:
                continue
            if raw.subject is None or ".parts." in raw.subject or raw.data is None:
                continue
            if raw.subject.endswith(".accepted"):  # the router's receipt, not a verdict
                continue
            verdict = Verdict.model_validate_json(raw.data)
            found.setdefault(verdict.job_id, []).append(verdict)
    finally:
        await nc.close()
    return found


def duplicates_of(found: dict[UUID, list[Verdict]]) -> list[str]:
    """Jobs with two verdicts of one revision, or verdicts of different statuses."""
    dup = []
    for job_id, verdicts in found.items():
        revisions = Counter(v.revision for v in verdicts)
        statuses = {v.status for v in verdicts}
        if max(revisions.values()) > 1 or len(statuses) > 1:
            dup.append(f"{job_id}: {[(v.revision, v.status) for v in verdicts]}")
    return dup


async def charges_since(admin: Settings, event_id: int) -> dict[str, dict[str, int]]:
    """Reputation events against nodes after event `event_id`, by node and kind."""
    db = await _ledger(admin)
    try:
        rows = await db.fetch(
            "SELECT node_id, kind, count(*) AS n FROM reputation_events"
            " WHERE event_id > $1 AND kind = ANY($2::text[]) GROUP BY node_id, kind",
            event_id,
            list(CHARGES),
        )
    finally:
        await db.close()
    charges: dict[str, dict[str, int]] = {}
    for row in rows:
        charges.setdefault(row["node_id"], {})[row["kind"]] = int(row["n"])
    return charges


async def last_event(admin: Settings) -> int:
    """The latest reputation event's id (0 when none)."""
    db = await _ledger(admin)
    try:
        return int(await db.fetchval("SELECT coalesce(max(event_id), 0) FROM reputation_events"))
    finally:
        await db.close()


async def quarantined(admin: Settings) -> set[str]:
    """Nodes in quarantine, with the model they are quarantined for (node@model; the
    node's overall standing has the empty model)."""
    db = await _ledger(admin)
    try:
        rows = await db.fetch(
            "SELECT node_id, model FROM node_standing WHERE trust = 'quarantined'"
        )
    finally:
        await db.close()
    return {f"{row['node_id']}@{row['model']}" for row in rows}


async def drive(
    scenario: str,
    *,
    admin: Settings,
    client: Settings,
    load: Load,
    disturbances: Iterable[Awaitable[Any]] = (),
    pids: Callable[[], dict[str, list[int]]] = dict,
) -> Tally:
    """Run `load` through a client on `client`'s credentials while `disturbances` run,
    then count everything with the `admin`'s. Sampled memory covers the processes
    `pids` names."""
    tally = Tally(scenario)
    began = time.monotonic()
    baseline = await last_event(admin)
    before = await quarantined(admin)
    with MemorySampler(pids) as memory:
        async with Client(client) as sdk:
            subs, *_ = await asyncio.gather(submit_all(sdk, load), *disturbances)
        await await_verdicts(admin, subs, load)
    tally.peak_mib = memory.peak_mib
    tally.submitted = len(subs)
    tally.accepted = sum(s.accepted for s in subs)
    tally.refused = [s.error for s in subs if not s.accepted]
    accepted = [s for s in subs if s.accepted]
    published = await published_at(admin, [s.job_id for s in accepted])
    found = await stream_verdicts(admin)
    statuses: Counter[str] = Counter()
    for s in accepted:
        verdicts = found.get(s.job_id, [])
        if verdicts:
            statuses[max(verdicts, key=lambda v: v.revision).status] += 1
        at = published.get(s.job_id)
        if not verdicts or at is None or at > s.at + load.deadline_s + load.grace_s:
            tally.lost.append(str(s.job_id))
            tally.late += bool(verdicts and at is not None)
    tally.verdicts = dict(statuses)
    tally.duplicates = duplicates_of({j: found[j] for j in (s.job_id for s in subs) if j in found})
    tally.charges = await charges_since(admin, baseline)
    tally.quarantined = sorted(await quarantined(admin) - before)
    tally.quarantined_before = sorted(before)
    tally.wall_s = time.monotonic() - began
    return tally
