"""A router in this process, against the real services, with a node that exists only as
its heartbeats and its queue: what the router sends is read straight off that queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import aio_pika
import asyncpg
import pytest

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.live import router_ports
from cortensor.adapters.topology import Topology
from cortensor.client import Client
from cortensor.protocol.replication import REPLICAS
from cortensor.schemas import Assignment, InferenceResult, JobRequest, NodeHeartbeat, utcnow
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from tests.conftest import eventually
from tests.node_keys import bind, signed_by

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.nats]

NODE = "router-test-node"


@contextlib.asynccontextmanager
async def fake_nodes(
    settings: Settings, names: Sequence[str]
) -> AsyncIterator[dict[str, aio_pika.abc.AbstractQueue]]:
    """The fake nodes' queues, while the fake nodes announce themselves and a router runs."""
    topology = Topology(settings.namespace)
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    specs = {name: topology.node_queue(name, "cpu-int8") for name in names}
    for spec in specs.values():
        await amqp.declare_queue(channel, spec)
    nc = await jetstream.connect(settings.nats_url, name="fake-nodes")
    ledger = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await bind(ledger, *names)
    finally:
        await ledger.close()
    beats = [
        NodeHeartbeat(
            node_id=name,
            hw_class="cpu-int8",
            precision="int8",
            tasks=["embed"],
            models=["all-MiniLM-L6-v2"],
            capacity=4,
            inflight=0,
            processed=0,
            started_at=utcnow(),
        )
        for name in names
    ]

    async def announce() -> None:
        while True:
            for beat in beats:
                subject = topology.heartbeat_subject(beat.node_id)
                payload = beat.model_copy(update={"created_at": utcnow()}).model_dump_json()
                headers = signed_by(beat.node_id, payload.encode())
                await nc.publish(subject, payload.encode(), headers=headers)
            await asyncio.sleep(0.2)

    stop = asyncio.Event()

    async def serve() -> None:
        async with router_ports(settings) as ports:
            await Router(settings, ports, seed=7).run(stop)

    router = asyncio.create_task(serve())
    heartbeats = asyncio.create_task(announce())
    try:
        yield {name: await channel.get_queue(spec.name) for name, spec in specs.items()}
    finally:
        stop.set()
        await router
        heartbeats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeats
        await nc.drain()
        for spec in specs.values():
            await channel.queue_delete(spec.name)
        await connection.close()


@pytest.fixture
async def node_queue(broker_settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """The fake node's queue, while the fake node announces itself and a router runs."""
    async with fake_nodes(broker_settings, [NODE]) as queues:
        yield queues[NODE]


async def _next_task(queue: aio_pika.abc.AbstractQueue) -> dict[str, Any]:
    """The kwargs of the next task message on the queue (waiting up to 15 s)."""
    for _ in range(300):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            assert message.headers["task"] == "cortensor.run_assignments"
            _, kwargs, _ = json.loads(message.body)
            return dict(kwargs)
        await asyncio.sleep(0.05)
    raise AssertionError("no task message reached the node's queue")


async def _next_task_of(queue: aio_pika.abc.AbstractQueue, job_id: uuid.UUID) -> dict[str, Any]:
    """The kwargs of the next task message that carries `job_id`'s assignments, passing
    over those of other jobs (a job an earlier test left waiting is routed once the node
    is admitted)."""
    for _ in range(20):
        task = await _next_task(queue)
        if any(a["job_id"] == str(job_id) for a in task["assignments"]):
            return task
    raise AssertionError(f"no task message for job {job_id} reached the node's queue")


async def _ledger_row(settings: Settings, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        for _ in range(100):
            row = await conn.fetchrow(query, *args)
            if row is not None:
                return row
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise AssertionError(f"nothing in the ledger for {query}")


async def _admit(settings: Settings, queues: Mapping[str, aio_pika.abc.AbstractQueue]) -> None:
    """Admit fake nodes as if they had passed their probes, and drop the probes sent."""
    for name in queues:
        await _ledger_row(settings, "SELECT 1 FROM nodes WHERE node_id = $1", name)
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await conn.execute(
            """
            INSERT INTO node_standing (node_id, model, trust)
            SELECT unnest($1::text[]), '', 'active'
            ON CONFLICT (node_id, model) DO UPDATE SET trust = 'active'
            """,
            list(queues),
        )
        # A router refresh stamps every node's last_seen, then reads the standings: two
        # stamps after the commit mean one whole refresh read them.
        node = next(iter(queues))

        async def stamped_after(moment: datetime) -> datetime | None:
            seen: datetime = await conn.fetchval(
                "SELECT last_seen FROM nodes WHERE node_id = $1", node
            )
            return seen if seen > moment else None

        committed: datetime = await conn.fetchval("SELECT clock_timestamp()")
        first = await eventually(lambda: stamped_after(committed), what="a refresh")
        await eventually(lambda: stamped_after(first), what="a refresh after it")
    finally:
        await conn.close()
    for queue in queues.values():
        await queue.purge()


async def _tasks_for(
    queues: Mapping[str, aio_pika.abc.AbstractQueue], job_id: uuid.UUID, wait_s: float
) -> dict[str, dict[str, Any]]:
    """The assignments of one job that reached the nodes' queues within `wait_s`, by node
    (other tasks, probes say, are dropped)."""
    found: dict[str, dict[str, Any]] = {}
    loop = asyncio.get_running_loop()
    until = loop.time() + wait_s
    while loop.time() < until:
        for name, queue in queues.items():
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                continue
            _, kwargs, _ = json.loads(message.body)
            for a in kwargs["assignments"]:
                if a["job_id"] == str(job_id):
                    found[name] = a
        await asyncio.sleep(0.02)
    return found


async def test_a_new_node_is_sent_probes_that_look_like_real_jobs(
    broker_settings: Settings, node_queue: aio_pika.abc.AbstractQueue
) -> None:
    first = await _next_task(node_queue)
    [probe] = first["assignments"]
    assert probe["node_id"] == NODE
    assert probe["model"] == "all-MiniLM-L6-v2"
    job = await _ledger_row(
        broker_settings,
        "SELECT probe, params FROM jobs WHERE job_id = $1",
        uuid.UUID(probe["job_id"]),
    )
    assert job["probe"] is True
    reference = json.loads(job["params"])["reference"]
    assert len(reference) == len(probe["inputs"])
    # Nothing in the message says it is a probe: the same fields as any assignment.
    real = Assignment(
        job_id=uuid.uuid4(),
        node_id=NODE,
        task="embed",
        model="all-MiniLM-L6-v2",
        inputs=["x"],
        hw_class="cpu-int8",
        deadline_at=utcnow(),
    ).model_dump(mode="json")
    assert probe.keys() == real.keys()
    # Until it is admitted, a real job waits for other nodes.
    async with Client(broker_settings) as client:
        await client.submit(JobRequest(inputs=["not for you"], redundancy=1))
    waiting = await _ledger_row(
        broker_settings, "SELECT status FROM jobs WHERE NOT probe AND inputs = '[\"not for you\"]'"
    )
    assert waiting["status"] == "waiting"


async def test_a_job_delivered_again_sends_its_outstanding_assignments_again(
    broker_settings: Settings, node_queue: aio_pika.abc.AbstractQueue
) -> None:
    await _admit(broker_settings, {NODE: node_queue})
    job = JobRequest(inputs=["resend me"], redundancy=1)
    async with Client(broker_settings) as client:
        await client.submit(job)
        first = await _next_task_of(node_queue, job.job_id)
        # The same job again: as if the router had stopped between its commit and
        # its publish, and the job had come back from the queue.
        await client.submit(job)
        second = await _next_task_of(node_queue, job.job_id)

    [sent] = first["assignments"]
    assert sent["job_id"] == str(job.job_id)
    assert sent["node_id"] == NODE
    assert sent["inputs"] == ["resend me"]
    [again] = second["assignments"]
    # The same assignment (id, node, deadline), in a new message.
    assert {k: v for k, v in again.items() if k != "created_at"} == {
        k: v for k, v in sent.items() if k != "created_at"
    }


async def test_a_checked_auto_jobs_checkers_go_out_only_once_its_leader_answered(
    broker_settings: Settings,
) -> None:
    names = [f"hidden-check-{i}" for i in range(REPLICAS)]
    async with fake_nodes(broker_settings, names) as queues:
        await _admit(broker_settings, queues)
        job = JobRequest(inputs=["checked, but it cannot tell"])
        assert job.redundancy == "auto"
        async with Client(broker_settings) as client:
            await client.submit(job)
            # The nodes have no run of valid results: adaptive replication checks every
            # job they lead. Yet only the leader is sent anything, for a second (four
            # sweeps of the router).
            sent = await _tasks_for(queues, job.job_id, wait_s=1.0)
            [(leader, assignment)] = sent.items()
            assert assignment["attempt"] == 1
            row = await _ledger_row(
                broker_settings, "SELECT redundancy FROM jobs WHERE job_id = $1", job.job_id
            )
            assert row["redundancy"] == REPLICAS

            # The leader answers and the guard stores it: now the checkers go out.
            guard = await GuardLedger.connect(broker_settings.asyncpg_dsn)
            try:
                answer = InferenceResult(
                    assignment_id=uuid.UUID(assignment["assignment_id"]),
                    job_id=job.job_id,
                    node_id=leader,
                    model=assignment["model"],
                    hw_class="cpu-int8",
                    precision="int8",
                    embeddings=[[0.6, 0.8]],
                    elapsed_ms=3.0,
                )
                intake = await guard.take_results(job.job_id, [answer])
            finally:
                await guard.close()
            assert (intake.stored, intake.verdict) == (1, None)
            checkers = await _tasks_for(queues, job.job_id, wait_s=1.0)

    assert sorted(checkers) == sorted(set(names) - {leader})
    # The same assignment a leader gets, for the same job, on other nodes.
    for checker in checkers.values():
        assert checker.keys() == assignment.keys()
        assert (checker["inputs"], checker["model"]) == (assignment["inputs"], assignment["model"])
    conn = await asyncpg.connect(broker_settings.asyncpg_dsn)
    try:
        order = await conn.fetchrow(
            """
            SELECT (SELECT received_at FROM results WHERE job_id = $1) AS answered,
                   (SELECT min(created_at) FROM assignments
                    WHERE job_id = $1 AND node_id <> $2) AS checked
            """,
            job.job_id,
            leader,
        )
    finally:
        await conn.close()
    assert order["checked"] > order["answered"]


async def test_a_job_is_its_publishers_and_a_key_naming_nobody_is_dead_lettered(
    broker_settings: Settings, node_queue: aio_pika.abc.AbstractQueue
) -> None:
    topology = Topology(broker_settings.namespace)
    rejected_id = uuid.uuid4()
    async with Client(broker_settings) as client:
        assert client.owner == broker_settings.principal
        job = JobRequest(inputs=["whose is it"], redundancy=1)
        await client.submit(job)
        row = await _ledger_row(
            broker_settings, "SELECT owner FROM jobs WHERE job_id = $1", job.job_id
        )
        assert row["owner"] == client.owner
        # A rejection is the owner's too: published on its subjects, read back directly.
        bad = {"job_id": str(rejected_id), "task": "embed", "inputs": []}
        await client.publish_raw(json.dumps(bad).encode(), message_id=str(rejected_id))
        verdict = await client.wait(rejected_id, 15)
        assert (verdict.status, verdict.owner) == ("rejected", client.owner)
        assert await client.result(rejected_id) == verdict

    # Keys the router's binding takes that name no valid owner: parked, with the fix.
    connection = await aio_pika.connect(broker_settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        jobs = await channel.get_exchange(topology.jobs_exchange)
        nobody = JobRequest(inputs=["nobody's"], redundancy=1)
        for key in ("job._x", "job."):
            await jobs.publish(
                amqp.json_message(nobody.model_dump_json().encode(), message_id=key),
                routing_key=key,
            )
        # The router dead-letters them; its dead-letter reader parks them with the reason.
        dead = await channel.get_queue(topology.parked_queue)
        parked: dict[str, str] = {}

        async def both_parked() -> bool:
            message = await dead.get(no_ack=True, fail=False)
            if message is not None and message.message_id is not None:
                parked[message.message_id] = str(message.headers[amqp.REASON_HEADER])
            return len(parked) == 2

        await eventually(both_parked, what="both jobs dead-lettered")
    finally:
        await connection.close()
    assert set(parked) == {"job._x", "job."}
    assert all("publish with routing key job.<your name>" in why for why in parked.values())
    conn = await asyncpg.connect(broker_settings.asyncpg_dsn)
    try:
        assert (
            await conn.fetchval("SELECT count(*) FROM jobs WHERE job_id = $1", nobody.job_id) == 0
        )
    finally:
        await conn.close()
