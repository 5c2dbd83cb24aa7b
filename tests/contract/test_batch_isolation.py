"""One bad job never fails the batch it arrived with: the router takes a failed batch
again one job at a time, so that only the job at fault meets the failure's disposition.

The router runs on the in-memory brokers with the real ledger; the fault is injected
where a job the ledger cannot record would raise (`open_jobs`), for one job only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from cortensor.adapters import memory
from cortensor.adapters.amqp import REASON_HEADER
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.memory import MemoryBroker, MemoryChannel, MemoryKeys, MemoryNats
from cortensor.adapters.topology import Topology
from cortensor.errors import BadInput
from cortensor.protocol.units import NewJob
from cortensor.schemas import JobRequest
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from tests.conftest import eventually

pytestmark = [pytest.mark.postgres]

GOOD = 5


@dataclass
class Routed:
    topology: Topology
    broker: MemoryBroker
    router: Router
    ledger: RouterLedger
    channel: MemoryChannel

    def submit(self, job: JobRequest) -> None:
        self.broker.publish(
            self.topology.jobs_exchange,
            self.topology.jobs_routing_key("client-1"),
            job.model_dump_json().encode(),
            message_id=str(job.job_id),
        )

    def settled(self) -> bool:
        return self.broker.depth(self.topology.router_queue) == 0 and not self.channel.unsettled

    def dead_letters(self) -> list[Any]:
        dead = []
        while (message := self.broker.get(self.topology.dead_letter_queue)) is not None:
            dead.append(message)
        return dead

    async def recorded(self, jobs: Sequence[JobRequest]) -> bool:
        found = await self.ledger.pool.fetchval(
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1::uuid[])", [j.job_id for j in jobs]
        )
        return bool(found == len(jobs))


@pytest.fixture
async def routed(ledger_settings: Settings) -> AsyncIterator[Routed]:
    settings = ledger_settings.model_copy(
        update={
            "namespace": f"iso{uuid.uuid4().hex[:8]}",
            "retry_base_s": 0.01,
            "retry_cap_s": 0.02,
        }
    )
    topology = Topology(settings.namespace)
    broker, nats = MemoryBroker(topology), MemoryNats(topology)
    ledger = await RouterLedger.connect(settings.asyncpg_dsn)
    ports, channel = memory.router_ports(ledger, broker, nats, topology, keys=MemoryKeys({}))
    router = Router(settings, ports, seed=1)
    stop = asyncio.Event()
    running = asyncio.create_task(router.run(stop))
    try:
        yield Routed(topology, broker, router, ledger, channel)
    finally:
        stop.set()
        await running
        await ledger.close()


def refusing(
    routed: Routed, poison: uuid.UUID, error: Exception, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """Make `open_jobs` raise `error` whenever it is given the poison job; returns the
    size of each batch that held it."""
    sizes: list[int] = []
    open_jobs = routed.ledger.open_jobs

    async def stand_in(jobs: Sequence[NewJob]) -> Any:
        if any(new.job.job_id == poison for new in jobs):
            sizes.append(len(jobs))
            raise error
        return await open_jobs(jobs)

    monkeypatch.setattr(routed.ledger, "open_jobs", stand_in)
    return sizes


@pytest.mark.parametrize(
    "error",
    [KeyError("a bug"), BadInput("a value the ledger refuses")],
    ids=["retried-fault", "permanent-fault"],
)
async def test_the_jobs_beside_a_bad_one_are_recorded_and_only_it_is_parked(
    routed: Routed, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    poison = JobRequest(inputs=["the one at fault"], redundancy=1)
    good = [JobRequest(inputs=[f"fine {i}"], redundancy=1) for i in range(GOOD)]
    sizes = refusing(routed, poison.job_id, error, monkeypatch)
    for job in [good[0], poison, *good[1:]]:  # one batch: published before the router runs
        routed.submit(job)

    # Each failed attempt logs its traceback; the console renderer takes a while over it.
    await eventually(
        lambda: routed.recorded(good), what=f"all {GOOD} good jobs recorded", within=60
    )
    await eventually(routed.settled, what="every job acked or parked", within=60)
    [dead] = routed.dead_letters()
    assert dead.message_id == str(poison.job_id)
    if isinstance(error, BadInput):
        assert dead.headers[REASON_HEADER] == f"BadInput: {error}"
    assert max(sizes) == GOOD + 1, "the bad job arrived with the good ones"
    assert sizes[-1] == 1, "and was last tried alone"
    assert not await routed.recorded([poison])
