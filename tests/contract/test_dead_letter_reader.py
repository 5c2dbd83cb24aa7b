"""The router's dead-letter reader on the in-memory brokers, with the real ledger: every
readable job that reaches the dead-letter queue ends with exactly one terminal verdict
that says why, however often it is seen; a job open in the ledger is left to end by its
deadline; a node's task is dropped; the unreadable is parked with its reason; a poisoned
message does not stop the reader. (tests/integration/test_dead.py runs the same on the
real servers.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from cortensor.adapters import memory
from cortensor.adapters.amqp import REASON_HEADER
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.memory import MemoryBroker, MemoryChannel, MemoryKeys, MemoryNats
from cortensor.adapters.topology import Topology
from cortensor.errors import LedgerUnavailable
from cortensor.schemas import JobRequest, Verdict
from cortensor.services.router import dead
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from tests.conftest import eventually
from tests.contract.test_dispositions import failing

pytestmark = [pytest.mark.postgres]

OWNER = "client-1"


@dataclass
class Net:
    settings: Settings
    topology: Topology
    broker: MemoryBroker
    nats: MemoryNats
    router: Router
    channel: MemoryChannel

    def submit(self, job: JobRequest) -> None:
        self.broker.publish(
            self.topology.jobs_exchange,
            self.topology.jobs_routing_key(OWNER),
            job.model_dump_json().encode(),
            message_id=str(job.job_id),
        )

    def dead_letter(self, body: bytes, headers: dict[str, Any], routing_key: str = "") -> None:
        """Publish straight into the dead-letter exchange, as RabbitMQ or a router would."""
        self.broker.publish(
            self.topology.dead_letter_exchange,
            routing_key or self.topology.jobs_routing_key(OWNER),
            body,
            headers=headers,
        )

    def router_death(self) -> dict[str, Any]:
        """The x-death entry RabbitMQ writes for a job past the router queue's limit."""
        return {
            "x-death": [
                {
                    "count": 1,
                    "reason": "delivery_limit",
                    "queue": self.topology.router_queue,
                    "routing-keys": [self.topology.jobs_routing_key(OWNER)],
                }
            ]
        }

    def verdicts(self, job_id: uuid.UUID) -> list[Verdict]:
        return [
            Verdict.model_validate_json(data)
            for subject, data in self.nats.stored(self.topology.verdicts_stream)
            if subject.endswith(str(job_id))
        ]

    def drained(self) -> bool:
        return (
            self.broker.depth(self.topology.dead_letter_queue) == 0 and not self.channel.unsettled
        )

    def parked(self) -> list[Any]:
        found = []
        while (message := self.broker.get(self.topology.parked_queue)) is not None:
            found.append(message)
        return found


@pytest.fixture
async def net(ledger_settings: Settings) -> AsyncIterator[Net]:
    settings = ledger_settings.model_copy(
        update={
            "namespace": f"dead{uuid.uuid4().hex[:8]}",
            "retry_base_s": 0.01,
            "retry_cap_s": 0.02,
        }
    )
    topology = Topology(settings.namespace)
    broker, nats = MemoryBroker(topology), MemoryNats(topology)
    ledger = await RouterLedger.connect(settings.asyncpg_dsn)
    ports, channel = memory.router_ports(
        ledger, broker, nats, topology, keys=MemoryKeys({}), dead_letters=True
    )
    router = Router(settings, ports, seed=1)
    stop = asyncio.Event()
    running = asyncio.create_task(router.run(stop))
    try:
        yield Net(settings, topology, broker, nats, router, channel)
    finally:
        stop.set()
        await running
        await ledger.close()


async def ledger_status(settings: Settings, job_id: uuid.UUID) -> tuple[str | None, str | None]:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT j.status, v.status AS verdict FROM jobs j LEFT JOIN verdicts v"
            " USING (job_id) WHERE j.job_id = $1",
            job_id,
        )
    finally:
        await conn.close()
    return (None, None) if row is None else (row["status"], row["verdict"])


async def test_a_job_the_router_always_fails_on_ends_failed_once_with_its_reason(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    take, calls = failing(10**6, lambda: KeyError("a bug"), net.router.take)
    monkeypatch.setattr(net.router, "take", take)
    job = JobRequest(inputs=["always fails"], redundancy=1)
    net.submit(job)
    [verdict] = await eventually(lambda: net.verdicts(job.job_id), what="the job's verdict")
    assert len(calls) == net.topology.router_delivery_limit + 1
    assert (verdict.status, verdict.owner) == ("failed", OWNER)
    assert "exhausted its deliveries" in verdict.reason
    assert f"x-delivery-limit {net.topology.router_delivery_limit}" in verdict.reason
    assert await ledger_status(net.settings, job.job_id) == ("failed", "failed")
    await eventually(net.drained, what="the dead letter settled")
    assert net.parked() == []


async def test_a_dead_letter_seen_again_ends_its_job_only_once(net: Net) -> None:
    job = JobRequest(inputs=["twice dead"], redundancy=1)
    for _ in range(3):
        net.dead_letter(job.model_dump_json().encode(), net.router_death())
    await eventually(net.drained, what="every copy handled")
    await eventually(lambda: net.verdicts(job.job_id), what="the verdict")
    assert len(net.verdicts(job.job_id)) == 1
    assert await ledger_status(net.settings, job.job_id) == ("failed", "failed")


async def test_a_job_open_in_the_ledger_is_left_to_end_by_its_deadline(net: Net) -> None:
    job = JobRequest(inputs=["open"], redundancy=1, deadline_s=300)
    net.submit(job)  # no node: recorded, waiting for one

    async def recorded() -> bool:
        return (await ledger_status(net.settings, job.job_id))[0] is not None

    await eventually(recorded, what="the job recorded")
    net.dead_letter(job.model_dump_json().encode(), net.router_death())
    await eventually(net.drained, what="the dead letter handled")
    assert net.verdicts(job.job_id) == []
    assert await ledger_status(net.settings, job.job_id) == ("waiting", None)


async def test_a_rejected_job_the_ledger_did_not_take_is_rejected_by_the_reader(
    net: Net,
) -> None:
    job_id = uuid.uuid4()
    body = json.dumps({"job_id": str(job_id), "task": "embed", "inputs": []}).encode()
    net.dead_letter(body, net.router_death())
    [verdict] = await eventually(lambda: net.verdicts(job_id), what="the verdict")
    assert verdict.status == "rejected"
    assert "inputs" in verdict.reason


async def test_a_node_task_is_dropped_and_the_unreadable_parked(net: Net) -> None:
    node_death = {
        "task": "cortensor.run_assignments",
        "x-death": [
            {"count": 1, "reason": "delivery_limit", "queue": f"{net.topology.namespace}.node.n1"}
        ],
    }
    net.dead_letter(b"[[], {}, {}]", node_death, routing_key="n1")
    net.broker.publish(
        net.topology.jobs_exchange, net.topology.jobs_routing_key(OWNER), b"{not json"
    )
    await eventually(lambda: net.broker.depth(net.topology.parked_queue), what="one parked")
    await eventually(net.drained, what="both handled")
    [parked] = net.parked()
    assert parked.body == b"{not json"
    assert "not usable JSON" in parked.headers[REASON_HEADER]
    assert parked.headers[dead.FROM_HEADER] == "router"
    assert parked.routing_key == net.topology.jobs_routing_key(OWNER)


async def test_the_reader_survives_a_poisoned_message_and_an_outage(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decide = dead.decide

    def poisoned(body: bytes, **kwargs: Any) -> Any:
        if body == b"poison":
            raise RecursionError("a message built to break the reader")
        return real_decide(body, **kwargs)

    monkeypatch.setattr(dead, "decide", poisoned)
    reject, calls = failing(
        2, lambda: LedgerUnavailable("ledger restarting"), net.router.ledger.reject
    )
    monkeypatch.setattr(net.router.ledger, "reject", reject)
    net.dead_letter(b"poison", {})
    job = JobRequest(inputs=["after the poison"], redundancy=1)
    net.dead_letter(job.model_dump_json().encode(), net.router_death())
    [verdict] = await eventually(lambda: net.verdicts(job.job_id), what="the verdict")
    assert verdict.status == "failed"
    assert len(calls) == 3, "retried through the outage"
    await eventually(net.drained, what="both handled")
    [parked] = net.parked()
    assert parked.body == b"poison"
    assert "could not read it" in parked.headers[REASON_HEADER]


async def test_a_verdict_written_but_not_published_is_left_to_the_republish_sweep(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader stops between the ledger's commit and the stream's ack: the dead letter
    comes back, finds its job known and publishes nothing twice; the verdict waits,
    unpublished, for the guards' sweep (Announcer.republish_stale)."""
    job = JobRequest(inputs=["published late"], redundancy=1)
    real = net.router.announcer.publish
    calls: list[int] = []

    async def publish(verdicts: Sequence[Verdict]) -> None:
        # Only the publishes of this job's verdict count: the router's sweep publishes
        # the (here empty) list of jobs it failed on its own schedule.
        if any(v.job_id == job.job_id for v in verdicts):
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("NATS went away")
        await real(verdicts)

    monkeypatch.setattr(net.router.announcer, "publish", publish)
    net.dead_letter(job.model_dump_json().encode(), net.router_death())
    await eventually(lambda: len(calls) >= 1 and net.drained(), what="handled after a retry")
    assert len(calls) == 1, "the copy that came back found its job known"
    assert net.verdicts(job.job_id) == []
    stale = await net.router.ledger.unpublished_verdicts(0.0)
    assert [v.job_id for v in stale if v.job_id == job.job_id] == [job.job_id]
    await net.router.announcer.republish_stale(0.0)
    assert [v.status for v in net.verdicts(job.job_id)] == ["failed"]
