"""The live path and the simulated path reach the same decisions from the same inputs.

A real fleet (router, guard, three honest nodes and one probe-aware cheat, which passes
its probes and then answers its real jobs wrongly) runs a few dozen jobs at
redundancy auto and at a fixed 3. Then, from the ledger alone, each
decided real job's inputs are rebuilt (its counted replicas in order of arrival, its
timed-out assignments, its redundancy, whether it is `auto`) and fed through the
simulation's own decision (cortensor.tools.simulate.judge_job, which decides every job
of a simulation): every verdict's status, agreeing and disagreeing nodes, and every
reputation event must be what the ledger recorded. Every node's events, in the ledger's
order, are then folded through the simulation's standing bookkeeping
(simulate.standing_after), and every field of every standing must equal what the SQL
trigger wrote in node_standing.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cortensor.client import Client
from cortensor.protocol.comparators import COMPARATORS
from cortensor.protocol.consensus import Replica
from cortensor.protocol.reputation import Standing
from cortensor.schemas import JobRequest, Verdict
from cortensor.settings import Settings
from cortensor.tools.attack import sentences
from cortensor.tools.fleet import Fleet
from cortensor.tools.simulate import judge_job, standing_after
from tests.e2e.conftest import running_fleet

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.nats,
    pytest.mark.postgres,
    pytest.mark.models,
]

CHEAT = "hostile-probe-aware"
AUTO_JOBS, FIXED_JOBS, WAVE = 40, 36, 6

_JOBS = """
SELECT j.job_id, j.task, j.redundancy, j.auto, j.status, j.unchecked, v.payload
FROM jobs j JOIN verdicts v USING (job_id)
WHERE NOT j.probe AND EXISTS (SELECT 1 FROM assignments a WHERE a.job_id = j.job_id)
ORDER BY j.created_at, j.job_id
"""
_REPLICAS = """
SELECT a.job_id, a.assignment_id, a.node_id, a.status, r.result_id, r.precision, r.output,
       r.error
FROM assignments a
JOIN jobs j USING (job_id)
LEFT JOIN results r USING (assignment_id)
WHERE NOT j.probe
ORDER BY r.seq NULLS LAST, a.assignment_id
"""
_EVENTS = """
SELECT e.node_id, e.model, e.assignment_id, a.job_id, e.kind, e.probe,
       extract(epoch FROM e.created_at)::double precision AS at
FROM reputation_events e LEFT JOIN assignments a USING (assignment_id)
ORDER BY e.node_id, e.node_seq NULLS FIRST, e.event_id
"""
_STANDINGS = "SELECT * FROM node_standing"
_OUTSTANDING = """
SELECT count(*) FROM assignments a JOIN jobs j USING (job_id)
WHERE NOT j.probe AND (a.status = 'assigned' OR j.status IN ('waiting', 'running'))
"""


@dataclass(frozen=True, slots=True)
class Ledger:
    """One consistent snapshot of what the replay reads."""

    jobs: list[Any]
    replicas: list[Any]
    events: list[Any]
    standings: list[Any]


@pytest.fixture(scope="module")
def replay_fleet(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Fleet]]:
    with running_fleet(
        models_dir,
        tmp_path_factory.mktemp("replay-fleet-logs"),
        nodes=3,
        # Admitted (every job on probation is a probe, and it answers those right), then
        # wrong on the real jobs it gets: a newcomer, it gets few (placement gives it a
        # tenth of the weight and at most one place in three), loses each vote, and is
        # quarantined.
        extra_nodes=[["--fault", "probe-aware", "--node-id", CHEAT]],
        env={"CORTENSOR_ASSIGNMENT_TIMEOUT_S": "8"},
        admitted=4,
    ) as started:
        yield started


async def _connect(settings: Settings) -> asyncpg.Connection:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return conn


async def _settled(settings: Settings, timeout_s: float = 90.0) -> None:
    """Wait until no real job has a replica out or a decision pending (stragglers are
    charged when their deadline passes)."""
    conn = await _connect(settings)
    try:
        for _ in range(int(timeout_s * 2)):
            if await conn.fetchval(_OUTSTANDING) == 0:
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"real jobs still had replicas out after {timeout_s:g}s")
    finally:
        await conn.close()


async def _read(settings: Settings) -> Ledger:
    conn = await _connect(settings)
    try:
        # One snapshot: events and the standings their trigger wrote agree in it.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return Ledger(
                jobs=list(await conn.fetch(_JOBS)),
                replicas=list(await conn.fetch(_REPLICAS)),
                events=list(await conn.fetch(_EVENTS)),
                standings=list(await conn.fetch(_STANDINGS)),
            )
    finally:
        await conn.close()


def _run_jobs(settings: Settings) -> list[Verdict]:
    """The fixed-redundancy jobs first, then the `auto` ones, in small waves; each `auto`
    wave after the router has read the standings again: streaks grow between waves, so
    that leaders get checked with one checker, or run alone, and not only with two."""
    # Random sentences, far apart as embeddings: near-identical texts would look to the
    # probe-aware cheat like one input sent again (a probe), and it would answer them
    # truly, so that no vote tested anything.
    texts = sentences(FIXED_JOBS + AUTO_JOBS, seed=7)
    fixed = [JobRequest(inputs=[texts[i]], redundancy=3, deadline_s=120) for i in range(FIXED_JOBS)]
    auto = [JobRequest(inputs=[texts[FIXED_JOBS + i]], deadline_s=120) for i in range(AUTO_JOBS)]
    pause = 1.5 * settings.registry_refresh_s

    async def run_all() -> list[Verdict]:
        async with Client(settings) as client:
            verdicts: list[Verdict] = []
            for wave in range(0, len(fixed), WAVE):
                verdicts += await client.run_many(fixed[wave : wave + WAVE], timeout_s=150)
            for wave in range(0, len(auto), WAVE):
                await asyncio.sleep(pause)
                verdicts += await client.run_many(auto[wave : wave + WAVE], timeout_s=150)
            return verdicts

    return asyncio.run(run_all())


def _replica(row: Any) -> Replica:
    return Replica(
        node_id=row["node_id"],
        result_id=str(row["result_id"]),
        precision=row["precision"],
        output=row["output"],
        error=row["error"],
        assignment_id=str(row["assignment_id"]),
    )


def _events_key(events: Any) -> list[tuple[str, str, str]]:
    return sorted((str(n), str(a), str(k)) for n, a, k in events)


def replay_decisions(ledger: Ledger) -> dict[str, int]:
    """Feed every decided real job through the simulation's decision; assert it matches
    the ledger. Returns what was compared."""
    by_job: dict[Any, list[Any]] = defaultdict(list)
    for row in ledger.replicas:
        by_job[row["job_id"]].append(row)
    recorded: dict[Any, list[tuple[str, str, str]]] = defaultdict(list)
    for e in ledger.events:
        if e["job_id"] is not None:
            recorded[e["job_id"]].append((e["node_id"], str(e["assignment_id"]), e["kind"]))
    compared = dict.fromkeys(("jobs", "verdicts", "kept_first", "events", "replicas"), 0)
    compared |= {"auto": 0, "alone": 0}
    for job in ledger.jobs:
        rows = by_job[job["job_id"]]
        counted = [_replica(r) for r in rows if r["status"] == "done"]
        late = [(str(r["assignment_id"]), r["node_id"]) for r in rows if r["status"] == "timed_out"]
        compare = COMPARATORS[job["task"]]
        verdict = job["payload"]
        where = f"job {job['job_id']} ({job['redundancy']} replicas, auto {job['auto']})"
        if job["unchecked"] and job["redundancy"] > 1:
            # A re-validation that found no verdict: the first one stands (its checkers'
            # timeouts are compared below with the job's other events).
            compared["kept_first"] += 1
        else:
            # The decision as the guard took it: the replicas in when it decided.
            at_decision = counted[: verdict["replicas"]]
            judged = judge_job(at_decision, job["redundancy"], auto=job["auto"], compare=compare)
            assert judged.status == verdict["status"] == job["status"], where
            assert set(judged.decision.agreeing) == set(verdict["agreeing"]), where
            assert set(judged.decision.disagreeing) == set(verdict["disagreeing"]), where
            compared["verdicts"] += 1
        # Every event the job earned, late answers and stragglers included.
        everything = judge_job(
            counted, job["redundancy"], auto=job["auto"], timed_out=late, compare=compare
        )
        assert _events_key(everything.events) == _events_key(recorded[job["job_id"]]), where
        compared["jobs"] += 1
        compared["events"] += len(everything.events)
        compared["replicas"] += len(counted) + len(late)
        compared["auto"] += job["auto"]
        compared["alone"] += job["auto"] and job["redundancy"] == 1
    return compared


def _same(stored: Any, replayed: Any) -> bool:
    if isinstance(replayed, float):
        return math.isclose(float(stored), replayed, rel_tol=1e-9, abs_tol=1e-9)
    return bool(stored == replayed)


def replay_standings(ledger: Ledger) -> dict[str, int]:
    """Fold every node's events, in the ledger's order, through the simulation's
    bookkeeping; assert every standing (overall and per model) equals node_standing."""
    folded: dict[tuple[str, str], Standing] = {}
    for e in ledger.events:
        for key in [(e["node_id"], "")] + ([(e["node_id"], e["model"])] if e["model"] else []):
            before = folded.get(key, Standing())
            folded[key] = standing_after(before, e["kind"], float(e["at"]), probe=e["probe"])
    stored = {(r["node_id"], r["model"]): r for r in ledger.standings}
    with_events = {key: row for key, row in stored.items() if key in folded}
    assert folded.keys() == with_events.keys()
    for key, standing in folded.items():
        row = stored[key]
        for name in (f.name for f in fields(Standing)):
            assert _same(row[name], getattr(standing, name)), (key, name, row[name], standing)
    return {"standings": len(folded), "nodes": len({node for node, _ in folded})}


@pytest.mark.timeout(600)
def test_the_simulation_decides_a_real_fleets_jobs_and_folds_its_standings_as_the_ledger(
    replay_fleet: tuple[Settings, Fleet],
) -> None:
    settings, _ = replay_fleet
    verdicts = _run_jobs(settings)
    assert len(verdicts) == AUTO_JOBS + FIXED_JOBS
    asyncio.run(_settled(settings))
    ledger = asyncio.run(_read(settings))

    decisions = replay_decisions(ledger)
    standings = replay_standings(ledger)
    trust = {r["node_id"]: r["trust"] for r in ledger.standings if r["model"] == ""}
    kinds: defaultdict[tuple[str, str], int] = defaultdict(int)
    for e in ledger.events:
        kinds[e["kind"], "probe" if e["probe"] else "job"] += 1
    shapes = Counter((j["auto"], j["redundancy"]) for j in ledger.jobs)
    streaks = {(r["node_id"], r["model"]): r["streak"] for r in ledger.standings}
    print(f"\nreplayed {decisions}, {standings}; events {dict(kinds)}; trust {trust}")
    lost = Counter(e["node_id"] for e in ledger.events if e["kind"] == "disagreed")
    print(f"jobs by (auto, redundancy) {dict(shapes)}; disagreed {dict(lost)}")
    print(f"streaks {streaks}")
    assert decisions["jobs"] == AUTO_JOBS + FIXED_JOBS
    assert decisions["verdicts"] + decisions["kept_first"] == decisions["jobs"]
    # The replay meant something: checked jobs earned events, the cheat was seen.
    assert decisions["events"] > 0
    assert kinds["disagreed", "job"] > 0, "the cheat never lost a vote: nothing was tested"
    assert standings["nodes"] == 4
