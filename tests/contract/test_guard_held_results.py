"""A guard killed while it holds results it fetched and has not committed: the results
stay with the consumer until its ack wait ends, and come back to another guard. They
were stored in time, so neither the router nor the next guard may judge their deadlines
meanwhile (cortensor.protocol.outages.judging_horizon): the job is verified with them
and no node is charged. On the twin brokers with the real ledger, as
test_services_on_twins.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cortensor.adapters import memory
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.schemas import JobRequest, utcnow
from cortensor.services.guard.service import Guard
from cortensor.settings import Settings
from tests.conftest import eventually
from tests.contract.test_services_on_twins import MODEL, Network, node_ids, twin_network

pytestmark = pytest.mark.postgres

ACK_WAIT_S = 2.0
"""The guards' consumer's ack wait here (10 s in the topology), so that the held
results come back within the test."""


class Stuck(GuardLedger):
    """A guard's ledger whose commits never return: the guard holds what it fetched."""

    taking = asyncio.Event()

    async def take_results(self, *args: Any, **kwargs: Any) -> Any:
        self.taking.set()
        await asyncio.Event().wait()

    take_many = take_results


@pytest.fixture
async def parts(
    ledger_settings: Settings,
) -> AsyncIterator[tuple[Network, tuple[Settings, asyncio.Task[None]]]]:
    async with twin_network(ledger_settings, guard_ledger=Stuck, ack_wait_s=ACK_WAIT_S) as (
        net,
        doomed,
    ):
        yield net, (net.settings, doomed)


async def test_results_a_killed_guard_held_are_counted_and_no_node_is_charged(
    parts: tuple[Network, tuple[Settings, asyncio.Task[None]]],
) -> None:
    net, (settings, killed) = parts
    nodes = node_ids("held", 3)
    for node in nodes:
        await net.join(node)
    job = JobRequest(inputs=["held"], redundancy=3, model=MODEL, deadline_s=2.0)
    net.submit(job.model_dump_json().encode(), str(job.job_id))
    sent = await net.assignments_of(job.job_id, 3)
    for a in sent:
        await net.answer(a, [1.0] + [0.0] * 383, msg_id=str(a.assignment_id))
    await asyncio.wait_for(Stuck.taking.wait(), 5.0)  # the results are in its hands
    killed.cancel()  # kill -9: nothing acked, nothing committed
    await asyncio.gather(killed, return_exceptions=True)
    durable = net.topology.guard_consumer.durable
    assert net.nats.oldest_untaken(durable) is not None

    # Past every deadline, with nobody to take the results: nothing is judged.
    deadline = max(a.deadline_at for a in sent)
    await eventually(lambda: _after(deadline), what="the assignments' deadline", within=10.0)
    await asyncio.sleep(settings.sweep_interval_s * 4)  # the router's sweeps ran meanwhile
    assert await _charges(net, job.job_id) == []

    # A new guard: the held results come back after the ack wait and are counted.
    guard_ledger = await GuardLedger.connect(settings.asyncpg_dsn)
    guard = Guard(
        settings,
        memory.guard_ports(guard_ledger, net.nats, net.topology, keys=net.keys),
        fetch_wait_s=0.05,
    )
    guard.keyring.miss_reload_s = 0.0
    stop = asyncio.Event()
    running = asyncio.create_task(guard.run(stop))
    try:
        [verdict] = await eventually(
            lambda: net.verdicts(job.job_id), what="a verdict", within=ACK_WAIT_S * 5
        )
    finally:
        stop.set()
        await running
        await guard_ledger.close()
    assert verdict.status == "verified"
    assert sorted(verdict.agreeing) == sorted(nodes)
    assert verdict.timed_out == []
    assert await _charges(net, job.job_id) == []
    assert net.nats.oldest_untaken(durable) is None


def _after(moment: Any) -> bool:
    return bool(utcnow() > moment)


async def _charges(net: Network, job_id: uuid.UUID) -> list[tuple[str, str]]:
    rows = await net.db.fetch(
        "SELECT node_id, kind FROM reputation_events WHERE job_id = $1 AND kind <> 'agreed'",
        job_id,
    )
    return [(r["node_id"], r["kind"]) for r in rows]
