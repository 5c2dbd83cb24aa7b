"""Probes drawn from the ledger's verified traffic (cortensor.adapters.ledger.probes and
the router's ProbeSender) and judged by the guard, on PostgreSQL.

Each test gets a freshly migrated database, so that the pool holds exactly the jobs it
made.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from typing import Any

import pytest

from cortensor.adapters.ledger import probes as probe_ledger
from cortensor.protocol.placement import NodeView
from cortensor.protocol.probing import ProbePool
from cortensor.schemas import Assignment, InferenceResult, JobRequest, Verdict
from cortensor.services.router.probes import ProbeSender
from tests.conftest import make_settings
from tests.integration.conftest import Ledgers
from tests.integration.test_ledger_store import (
    MODEL,
    embeddings,
    heartbeat,
    in_s,
    open_running,
    result_for,
)

pytestmark = pytest.mark.postgres


def view(node_id: str, trust: str) -> NodeView:
    return NodeView(node_id, "cpu-fp32", frozenset({MODEL}), last_seen=0.0, trust=trust)


def answer(assignment: Assignment, output: list[list[float]]) -> InferenceResult:
    return result_for(assignment, output)


async def probe_jobs(ledgers: Ledgers) -> list[Any]:
    return list(
        await ledgers.router.pool.fetch(
            """
            SELECT j.job_id, j.params, j.inputs, j.redundancy, a.node_id, a.attempt
            FROM jobs j JOIN assignments a USING (job_id) WHERE j.probe ORDER BY a.node_id
            """
        )
    )


async def verified(ledgers: Ledgers, redundancy: int, answering: int) -> tuple[Any, list[Any]]:
    """A job on `redundancy` fresh nodes, the first `answering` of them agreeing."""
    running = await open_running(ledgers.router, redundancy=redundancy)
    truth = embeddings()
    for node in running.nodes[:answering]:
        await ledgers.guard.take_results(running.job.job_id, [answer(running.of(node), truth)])
    return running, truth


async def test_a_probe_is_drawn_from_a_verified_job_the_probed_node_never_held(
    own: Ledgers,
) -> None:
    source, truth = await verified(own, redundancy=3, answering=2)  # C held it, never answered
    lone, _ = await verified(own, redundancy=1, answering=1)  # verified by one node only
    fresh = ["new-d", "new-e"]
    await own.router.upsert_nodes([heartbeat(n) for n in fresh])

    pool = await probe_ledger.verified_jobs(own.router, {MODEL}, per_model=10)

    # Only the job two nodes agreed on, with its canonical answer and every holder.
    [probe] = pool
    assert probe.key == str(source.job.job_id)
    assert probe.reference == truth
    assert probe.precision == "fp32"
    assert probe.holders == frozenset(source.nodes)
    assert probe.agreed_at == {"fp32"}
    assert list(probe.inputs) == source.job.inputs
    assert 590 < probe.deadline_s < 601  # the time its user gave it
    assert str(lone.job.job_id) not in {p.key for p in pool}

    settings = make_settings(probe_interval_s=0.02, active_probe_interval_s=0.02, node_ttl_s=1e9)
    sender = ProbeSender(settings, random.Random(3))
    views = [view(n, "active") for n in source.nodes] + [view(n, "probation") for n in fresh]
    sent: list[Assignment] = []
    for _ in range(200):
        sent += await sender.send(own.router, views)
        if len(sent) == len(fresh):
            break
        await asyncio.sleep(0.01)
    # The two new nodes got it; the three that held the job (answered or not) did not.
    assert sorted(a.node_id for a in sent) == fresh
    assert {tuple(a.inputs) for a in sent} == {tuple(source.job.inputs)}
    rows = await probe_jobs(own)
    assert [(r["node_id"], r["attempt"], r["redundancy"]) for r in rows] == [
        (n, 1, 1) for n in fresh
    ]
    for row in rows:
        params = json.loads(row["params"]) if isinstance(row["params"], str) else row["params"]
        assert params["source"] == probe.key
        assert params["reference"] == truth
        assert params["reference_precision"] == "fp32"

    # Another router, reading the ledger afresh, knows the new nodes have seen it too.
    other = ProbeSender(settings, random.Random(4))
    other.pool = ProbePool()
    await other.refresh(own.router, {MODEL})
    assert all(other.pool.pick(view(n, "probation"), random.Random(0)) is None for n in fresh)
    assert other.pool.pick(view("never-seen", "probation"), random.Random(0)) is not None


async def test_a_probe_verdict_is_published_and_reads_like_a_real_one(own: Ledgers) -> None:
    source, truth = await verified(own, redundancy=2, answering=2)
    honest, liar = "node-honest", "node-liar"
    await own.router.upsert_nodes([heartbeat(n) for n in (honest, liar)])
    settings = make_settings(
        probe_interval_s=0.02, quarantine_probe_interval_s=0.02, node_ttl_s=1e9
    )
    sender = ProbeSender(settings, random.Random(5))
    views = [view(honest, "probation"), view(liar, "quarantined")]
    sent: dict[str, Assignment] = {}
    for _ in range(400):
        sent |= {a.node_id: a for a in await sender.send(own.router, views)}
        if len(sent) == 2:
            break
        await asyncio.sleep(0.01)
    assert set(sent) == {honest, liar}

    right = await own.guard.take_results(sent[honest].job_id, [answer(sent[honest], truth)])
    wrong = await own.guard.take_results(sent[liar].job_id, [answer(sent[liar], embeddings())])

    # A real job run alone, for comparison.
    request = JobRequest(inputs=source.job.inputs, redundancy=1)
    [real_assignment] = [
        Assignment(
            job_id=request.job_id,
            node_id=source.nodes[0],
            task="embed",
            model=MODEL,
            inputs=request.inputs,
            hw_class="cpu-fp32",
            deadline_at=in_s(60),
        )
    ]
    assert await own.router.open_job(request, in_s(60), [real_assignment])
    real = await own.guard.take_results(request.job_id, [answer(real_assignment, truth)])

    def shape(verdict: Verdict | None) -> dict[str, Any]:
        assert verdict is not None
        data = verdict.model_dump(mode="json")
        return {k: type(v).__name__ if k.endswith("_id") or k == "created_at" else v
                for k, v in data.items() if k not in ("embeddings", "agreeing")}  # fmt: skip

    for intake, node in ((right, honest), (wrong, liar)):
        assert intake.new_verdict is True
        assert intake.verdict is not None
        assert shape(intake.verdict) == shape(real.verdict)
        assert intake.verdict.agreeing == [node]
        assert "probe" not in intake.verdict.model_dump_json()
    # Left for the announcer to publish, like the real job's.
    unpublished = await own.guard.pool.fetch(
        "SELECT job_id FROM verdicts WHERE published_at IS NULL"
    )
    assert {sent[honest].job_id, sent[liar].job_id, request.job_id} <= {
        r["job_id"] for r in unpublished
    }
    # The events alone say how the probes came out, and the router's schedule hears it.
    events = await own.guard.pool.fetch(
        "SELECT node_id, kind, probe FROM reputation_events WHERE node_id = ANY($1::text[])",
        [honest, liar],
    )
    assert {(e["node_id"], e["kind"], e["probe"]) for e in events} == {
        (honest, "agreed", True),
        (liar, "disagreed", True),
    }
    sender._read_at = float("-inf")  # read again now, not in probe_pool_refresh_s
    assert await sender.send(own.router, views) == []  # both have seen the only source
    assert (sender.schedule.failures(honest), sender.schedule.failures(liar)) == (0, 1)


async def test_the_probe_outcomes_start_after_the_router_does(own: Ledgers) -> None:
    await verified(own, redundancy=2, answering=2)
    first = await probe_ledger.last_event(own.router)
    assert first > 0
    assert await probe_ledger.probe_outcomes(own.router, first) == []
    assert await probe_ledger.probe_holders(own.router, [str(uuid.uuid4())]) == {}
