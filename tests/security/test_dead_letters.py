"""Dead and parked messages hold user content: with their own credentials, a node and a
client can neither read the dead-letter queue or the parked queue nor write into them;
the router reads the dead letters and parks what it cannot end, and reads nothing
parked. Principals of a namespace of this module's own, without a fleet."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from cortensor.adapters.ledger import migrate
from cortensor.adapters.live import router_ports
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.adapters.topology import Topology
from cortensor.schemas import JobRequest
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from cortensor.tools.credentials import revoke_namespace
from tests.conftest import eventually, make_settings, run_cortensor
from tests.security.harness import HW_CLASS, Principal, access_refused, amqp_as, issue

pytestmark = [pytest.mark.rabbitmq, pytest.mark.nats, pytest.mark.postgres]


@pytest.fixture(scope="module")
def admin() -> Iterator[Settings]:
    """The operator's settings for a namespace and ledger of this module's own."""
    settings = make_settings()
    migrate.upgrade(settings)
    asyncio.run(setup_brokers(settings))
    try:
        yield settings
    finally:
        revoke_namespace(settings)
        asyncio.run(teardown_brokers(settings))
        migrate.drop_database(settings)


@pytest.fixture(scope="module")
def principals(admin: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Principal]:
    out: Path = tmp_path_factory.mktemp("dead-principals")
    return {
        "router": issue(admin, "router", "router", out / "router.json"),
        "node": issue(admin, "node", "n-1", out / "n.json", "--hw-class", HW_CLASS),
        "client": issue(admin, "client", "c-1", out / "c.json"),
    }


def topology_of(who: Principal) -> Topology:
    return Topology(who.settings.namespace)


async def refused(
    who: Principal, what: str, act: Callable[[AbstractChannel], Awaitable[object]]
) -> str:
    async with amqp_as(who) as connection:
        channel = await connection.channel()
        return await access_refused(lambda: act(channel), what=f"{who.name}: {what}")


@pytest.mark.parametrize("kind", ["node", "client"])
async def test_nodes_and_clients_cannot_read_or_fill_dead_letters(
    principals: dict[str, Principal], kind: str
) -> None:
    who = principals[kind]
    topology = topology_of(who)
    for name in (topology.dead_letter_queue, topology.parked_queue):

        async def get(channel: AbstractChannel, name: str = name) -> object:
            queue = await channel.get_queue(name, ensure=False)
            return await queue.get(fail=False)

        async def consume(channel: AbstractChannel, name: str = name) -> object:
            async def take(message: AbstractIncomingMessage) -> None:
                await message.ack()

            queue = await channel.get_queue(name, ensure=False)
            return await queue.consume(take)

        for what, act in (("basic.get", get), ("consume", consume)):
            refusal = await refused(who, f"{what} {name}", act)
            assert "ACCESS_REFUSED" in refusal
            assert name in refusal
    for exchange in (topology.dead_letter_exchange, topology.parked_exchange):

        async def publish(channel: AbstractChannel, exchange: str = exchange) -> object:
            target = await channel.get_exchange(exchange, ensure=False)
            return await target.publish(aio_pika.Message(b"{}"), routing_key="")

        refusal = await refused(who, f"publish {exchange}", publish)
        assert "ACCESS_REFUSED" in refusal


async def test_the_router_reads_dead_letters_and_parks_but_reads_nothing_parked(
    principals: dict[str, Principal],
) -> None:
    router = principals["router"]
    topology = topology_of(router)
    async with amqp_as(router) as connection:
        channel = await connection.channel(publisher_confirms=True)
        dead = await channel.get_queue(topology.dead_letter_queue, ensure=False)
        assert await dead.get(fail=False) is None  # allowed, and empty
        park = await channel.get_exchange(topology.parked_exchange, ensure=False)
        await park.publish(aio_pika.Message(b"parked"), routing_key="")

    async def get_parked(channel: AbstractChannel) -> object:
        queue = await channel.get_queue(topology.parked_queue, ensure=False)
        return await queue.get(fail=False)

    refusal = await refused(router, "basic.get parked", get_parked)
    assert "ACCESS_REFUSED" in refusal


async def test_a_router_on_its_own_credentials_ends_dead_jobs_and_parks_the_rest(
    principals: dict[str, Principal], admin: Settings
) -> None:
    """The reader's consume, the ledger's write and the parking, with nothing but the
    router's issued credentials (the admin only publishes the dead letters)."""
    router = principals["router"]
    settings = router.settings
    topology = topology_of(router)
    job = JobRequest(inputs=["dead on arrival"], redundancy=1)
    stop = asyncio.Event()

    async def serve() -> None:
        async with router_ports(settings) as ports:
            await Router(settings, ports, seed=5).run(stop)

    running = asyncio.create_task(serve())
    connection = await aio_pika.connect(admin.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        dlx = await channel.get_exchange(topology.dead_letter_exchange)
        key = topology.jobs_routing_key("c-1")
        death = {
            "x-death": [
                {
                    "count": 1,
                    "reason": "delivery_limit",
                    "queue": topology.router_queue,
                    "routing-keys": [key],
                }
            ]
        }
        await dlx.publish(aio_pika.Message(job.model_dump_json().encode(), headers=death), key)
        await dlx.publish(aio_pika.Message(b"not json", headers={}), key)
        parked = await channel.get_queue(topology.parked_queue)
        bodies: list[bytes] = []

        async def parked_there() -> bool:
            message = await parked.get(no_ack=True, fail=False)
            if message is not None:
                bodies.append(message.body)
            return b"not json" in bodies

        await eventually(parked_there, what="the unreadable one parked")
        ledger = await asyncpg.connect(admin.asyncpg_dsn)
        try:
            status = await eventually(
                lambda: ledger.fetchval(
                    "SELECT status FROM verdicts WHERE job_id = $1", job.job_id
                ),
                what="the dead job's verdict",
            )
        finally:
            await ledger.close()
        assert status == "failed"
    finally:
        stop.set()
        await running
        await connection.close()


@pytest.mark.parametrize("kind", ["node", "client", "router"])
def test_cortensor_dead_says_that_only_the_admin_may_look(
    principals: dict[str, Principal], kind: str
) -> None:
    who = principals[kind]
    done = run_cortensor(who.settings, "--credentials", str(who.file), "dead", "list")
    assert done.returncode == 2, done.stderr
    assert "only the admin reads them" in done.stderr
    assert "Traceback" not in done.stderr
