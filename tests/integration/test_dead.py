"""Every accepted job ends, on the real servers: a job the router cannot take is
delivered up to the router queue's x-delivery-limit, dead-lettered by RabbitMQ, and
ended by the router's dead-letter reader with one `failed` verdict that says why; a dead
letter seen again changes nothing; the unreadable is parked, and `cortensor dead` lists
it without consuming it; `cortensor dead replay` sends a job that never got a verdict
back to the router, and refuses, saying why, what has one or cannot be read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import asyncpg
import pytest

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.live import router_ports
from cortensor.adapters.topology import Topology
from cortensor.errors import EXIT_NO
from cortensor.schemas import JobRequest, Verdict
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from tests.conftest import eventually, make_settings, run_cortensor

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.nats]


@pytest.fixture(scope="module")
def fast(broker_settings: Settings) -> Settings:
    """The module's namespace, with back-offs short enough to run out the delivery
    limit in a second or two."""
    return broker_settings.model_copy(update={"retry_base_s": 0.02, "retry_cap_s": 0.05})


@contextlib.asynccontextmanager
async def router(settings: Settings, *, broken: bool = False) -> AsyncIterator[Router]:
    """A router in this process (its dead-letter reader with it); a `broken` one fails on
    every job with a bug, so that each is retried until RabbitMQ dead-letters it."""
    stop = asyncio.Event()
    ready: asyncio.Future[Router] = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        async with router_ports(settings) as ports:
            service = Router(settings, ports, seed=3)
            if broken:

                async def take(*_: Any) -> list[str]:
                    raise KeyError("a bug the router meets on every job")

                service.take = take  # type: ignore[method-assign]
            ready.set_result(service)
            await service.run(stop)

    task = asyncio.create_task(serve())
    try:
        yield await asyncio.wait_for(ready, 30)
    finally:
        stop.set()
        await task


async def publish(settings: Settings, exchange: str, body: bytes, key: str, **headers: Any) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange)
        message = aio_pika.Message(
            body,
            message_id=headers.pop("message_id", None),
            headers=headers,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await target.publish(message, routing_key=key)


def router_death(topology: Topology, owner: str) -> dict[str, Any]:
    """The x-death RabbitMQ writes on a job past the router queue's delivery limit."""
    return {
        "x-death": [
            {
                "count": 1,
                "reason": "delivery_limit",
                "queue": topology.router_queue,
                "exchange": topology.jobs_exchange,
                "routing-keys": [topology.jobs_routing_key(owner)],
            }
        ],
        "x-first-death-queue": topology.router_queue,
        "x-first-death-reason": "delivery_limit",
    }


async def verdicts(settings: Settings, job_id: uuid.UUID, owner: str) -> list[Verdict]:
    """Every verdict message the stream holds for a job (one, when nothing went twice)."""
    topology = Topology(settings.namespace)
    subject = topology.verdicts_subject(str(job_id), owner=owner)
    nc = await jetstream.connect(settings.nats_url, name="dead-test")
    try:
        js = nc.jetstream()
        info = await js.stream_info(topology.verdicts_stream, subjects_filter=subject)
        count = (info.state.subjects or {}).get(subject, 0)
        if not count:
            return []
        last = await js.get_last_msg(topology.verdicts_stream, subject)
        return [Verdict.model_validate_json(last.data or b"")] * count
    finally:
        await nc.close()


async def depth(settings: Settings, queue: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


def dead_list(settings: Settings) -> list[dict[str, Any]]:
    done = run_cortensor(settings, "dead", "list", "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


async def test_a_job_the_router_cannot_take_ends_failed_once_through_the_delivery_limit(
    fast: Settings,
) -> None:
    owner = fast.principal
    topology = Topology(fast.namespace)
    job = JobRequest(inputs=["never taken"], redundancy=1)
    async with router(fast, broken=True):
        await publish(
            fast,
            topology.jobs_exchange,
            job.model_dump_json().encode(),
            topology.jobs_routing_key(owner),
            message_id=str(job.job_id),
        )
        [verdict] = await eventually(
            lambda: verdicts(fast, job.job_id, owner), what="the verdict", within=60
        )
    assert (verdict.job_id, verdict.status, verdict.owner) == (job.job_id, "failed", owner)
    assert "exhausted its deliveries" in verdict.reason
    assert f"in {topology.router_delivery_limit + 1} deliveries" in verdict.reason
    assert "x-death count 1" in verdict.reason
    assert await depth(fast, topology.dead_letter_queue) == 0
    assert await depth(fast, topology.parked_queue) == 0


async def test_dead_letters_seen_again_and_poison_leave_one_verdict_and_a_working_reader(
    fast: Settings,
) -> None:
    owner = fast.principal
    topology = Topology(fast.namespace)
    job = JobRequest(inputs=["dead three times"], redundancy=1)
    async with router(fast):
        # Headers built to trip a reader up: wrong types everywhere.
        await publish(
            fast,
            topology.dead_letter_exchange,
            b"\x00\xff" * 10,
            topology.jobs_routing_key(owner),
            **{"x-death": [{"queue": 5, "count": "x"}, "nonsense"], "x-cortensor-reason": 7},
        )
        for _ in range(3):
            await publish(
                fast,
                topology.dead_letter_exchange,
                job.model_dump_json().encode(),
                topology.jobs_routing_key(owner),
                **router_death(topology, owner),
            )
        [verdict] = await eventually(
            lambda: verdicts(fast, job.job_id, owner), what="the verdict", within=30
        )

        async def drained() -> bool:
            return await depth(fast, topology.dead_letter_queue) == 0

        await eventually(drained, what="every dead letter handled", within=30)
    assert verdict.status == "failed"
    assert len(await verdicts(fast, job.job_id, owner)) == 1
    parked = await eventually(
        lambda: [r for r in dead_list(fast) if r["queue"] == "parked"], what="the poison parked"
    )
    assert any("not usable JSON" in r["reason"] for r in parked), parked


@pytest.fixture
def quiet() -> Iterator[Settings]:
    """A namespace of this test's own with no router running, so that dead letters wait."""
    from cortensor.adapters.ledger import migrate
    from cortensor.adapters.provision import setup_brokers, teardown_brokers

    settings = make_settings()
    migrate.upgrade(settings)
    asyncio.run(setup_brokers(settings))
    yield settings
    asyncio.run(teardown_brokers(settings))
    migrate.drop_database(settings)


async def test_dead_list_shows_without_consuming_and_replay_refuses_or_sends_back(
    quiet: Settings,
) -> None:
    owner = quiet.principal
    topology = Topology(quiet.namespace)
    waiting = JobRequest(inputs=["waits in the dead queue"], redundancy=1)
    ended = JobRequest(inputs=["has a verdict"], redundancy=1)
    key = topology.jobs_routing_key(owner)
    await publish(
        quiet,
        topology.dead_letter_exchange,
        waiting.model_dump_json().encode(),
        key,
        message_id=str(waiting.job_id),
        **router_death(topology, owner),
    )
    await publish(
        quiet,
        topology.parked_exchange,
        b"not json at all",
        key,
        message_id="junk-1",
        **{amqp.REASON_HEADER: "message is not usable JSON", "x-cortensor-deliveries": 1},
    )
    await publish(
        quiet,
        topology.parked_exchange,
        ended.model_dump_json().encode(),
        key,
        message_id=str(ended.job_id),
        **{amqp.REASON_HEADER: "parked by hand"},
    )
    conn = await asyncpg.connect(quiet.asyncpg_dsn)
    try:
        await conn.execute(
            "INSERT INTO jobs (job_id, task, model, redundancy, hw_class, inputs, status, reason,"
            " deadline_at, decided_at, owner) VALUES ($1, 'embed', '', 0, '', '[]'::jsonb,"
            " 'failed', 'x', now(), now(), $2)",
            ended.job_id,
            owner,
        )
        await conn.execute(
            "INSERT INTO verdicts (job_id, status, reason, replicas, payload)"
            " VALUES ($1, 'failed', 'ended earlier', 0, '{}'::jsonb)",
            ended.job_id,
        )
    finally:
        await conn.close()

    rows = {r["id"]: r for r in dead_list(quiet)}
    assert set(rows) == {str(waiting.job_id), "junk-1", str(ended.job_id)}
    assert dead_list(quiet) == list(rows.values()), "listing consumes nothing"
    first = rows[str(waiting.job_id)]
    assert (first["queue"], first["job_id"], first["owner"]) == (
        "dead",
        str(waiting.job_id),
        owner,
    )
    assert first["reason"].startswith("to end failed: ")
    assert first["deliveries"] == topology.router_delivery_limit + 1
    assert first["size"] == len(waiting.model_dump_json().encode())
    junk = rows["junk-1"]
    assert (junk["queue"], junk["job_id"], junk["reason"]) == (
        "parked",
        None,
        "message is not usable JSON",
    )

    limited = run_cortensor(quiet, "dead", "list", "--json", "--limit", "1")
    assert limited.returncode == 0, limited.stderr
    assert sorted(r["queue"] for r in json.loads(limited.stdout)) == ["dead", "parked"]
    neither = run_cortensor(quiet, "dead", "replay")
    assert neither.returncode == 2
    assert "or --all" in neither.stderr

    refused = run_cortensor(quiet, "dead", "replay", "junk-1", str(ended.job_id))
    assert refused.returncode == EXIT_NO, refused.stderr
    assert "junk-1: refused: unreadable" in refused.stdout
    assert "already has its verdict: failed (ended earlier)" in refused.stdout
    unknown = run_cortensor(quiet, "dead", "replay", "no-such-id")
    assert unknown.returncode == 2
    assert "nothing dead or parked is called no-such-id" in unknown.stderr

    sent = run_cortensor(quiet, "dead", "replay", str(waiting.job_id))
    assert sent.returncode == 0, sent.stderr
    assert f"{waiting.job_id}: replayed: sent again under {key}" in sent.stdout
    assert await depth(quiet, topology.router_queue) == 1
    assert {r["id"] for r in dead_list(quiet)} == {"junk-1", str(ended.job_id)}

    purged = run_cortensor(quiet, "dead", "purge", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 2 parked message(s)" in purged.stdout
    assert dead_list(quiet) == []
