"""The gateway's own login (`credentials issue gateway`, gateway.json of the fleet): it
submits jobs under any one client's name and reads every client's verdicts, which is
what answering for many clients takes, and nothing else: no other exchange or routing
key, no queue, no result, no heartbeat, no verdict of its own making, no ledger.

Each attack is made with the gateway's credentials file alone, on raw connections, as
someone who stole it could."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from cortensor.client import Client
from cortensor.schemas import JobRequest, Verdict
from tests.conftest import eventually
from tests.security.harness import (
    FLEET_MARKS,
    HW_CLASS,
    Principal,
    SecuredFleet,
    access_refused,
    amqp_as,
    nats_as,
)

pytestmark = FLEET_MARKS

Act = Callable[[AbstractChannel], Awaitable[object]]
"""One AMQP act on a channel."""


def _gateway(secured: SecuredFleet) -> Principal:
    return secured.operators["gateway"]


def _job(text: str) -> JobRequest:
    return JobRequest(inputs=[text], redundancy=3)


async def test_the_gateway_submits_and_reads_for_every_client(secured: SecuredFleet) -> None:
    """Jobs published under alice's and mallory's keys are routed as theirs; the
    gateway hears both verdicts on its one subscription to every owner's and reads each
    back by a direct get, as the SDK does on its login."""
    gateway = _gateway(secured)
    assert gateway.raw["kind"] == "gateway"
    assert "database_url" not in gateway.raw, "no ledger login"
    owners = [secured.client.name, secured.other_client.name]
    jobs = {owner: _job(f"the gateway's job for {owner} {uuid.uuid4().hex}") for owner in owners}
    heard: dict[str, Verdict] = {}
    async with nats_as(gateway) as watched:

        async def keep(msg: Msg) -> None:
            verdict = Verdict.model_validate_json(msg.data)
            heard[verdict.owner] = verdict

        every = secured.topology.verdicts_subject("*", owner="*")
        await watched.nc.subscribe(every, cb=keep)
        async with amqp_as(gateway) as connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(secured.topology.jobs_exchange, ensure=False)
            for owner, job in jobs.items():
                message = aio_pika.Message(job.model_dump_json().encode(), delivery_mode=2)
                await exchange.publish(message, routing_key=f"job.{owner}")  # confirmed
        await eventually(lambda: set(heard) == set(owners), what="both verdicts", within=60.0)
        for owner, job in jobs.items():
            assert heard[owner].job_id == job.job_id
            assert heard[owner].status == "verified", heard[owner].reason
            assert set(heard[owner].agreeing) <= set(secured.nodes)
        assert watched.errors == []
    async with Client(gateway.settings) as client:
        for owner, job in jobs.items():
            again = await client.result(job.job_id, owner=owner)
            assert again is not None
            assert (again.job_id, again.owner) == (job.job_id, owner)
            assert await client.find_owner(job.job_id) == owner
        # The SDK path the gateway takes: a job run for alice, under alice's name.
        verdict = await client.run(_job("run by the gateway for alice"), owner=owners[0])
    assert verdict.status == "verified", verdict.reason
    assert verdict.owner == owners[0]
    await secured.good_job_verified()


async def test_the_gateway_publishes_nowhere_else_and_reads_no_queue(
    secured: SecuredFleet,
) -> None:
    """Only `job.<one name>` on the jobs exchange: not a key the router's binding would
    not take, not the router's queue directly, not a node's class exchange (a forged
    assignment), not the dead letters; no queue read or declared."""
    gateway, topology = _gateway(secured), secured.topology
    body = _job("routed around the router").model_dump_json().encode()

    def _publish(exchange: str, key: str) -> Act:
        async def act(channel: AbstractChannel) -> object:
            ex = await channel.get_exchange(exchange, ensure=False)
            return await ex.publish(aio_pika.Message(body), routing_key=key)

        return act

    async def router_queue(channel: AbstractChannel) -> object:
        message = aio_pika.Message(body)
        return await channel.default_exchange.publish(message, routing_key=topology.router_queue)

    acts: dict[str, Act] = {
        "key job.#": _publish(topology.jobs_exchange, "job.#"),
        "key job.a.b": _publish(topology.jobs_exchange, f"job.{secured.client.name}.b"),
        "key router": _publish(topology.jobs_exchange, "router"),
        "an assignment": _publish(topology.hw_exchange(HW_CLASS), secured.nodes[0]),
        "a dead letter": _publish(topology.dead_letter_exchange, ""),
        "a parked message": _publish(topology.parked_exchange, ""),
        "the router's queue": router_queue,
    }
    for queue in (
        topology.router_queue,
        topology.dead_letter_queue,
        topology.parked_queue,
        topology.node_queue(secured.nodes[0], HW_CLASS).name,
    ):

        async def get(channel: AbstractChannel, queue: str = queue) -> object:
            return await (await channel.get_queue(queue, ensure=False)).get(fail=False)

        acts[f"get {queue}"] = get

    async def declare(channel: AbstractChannel) -> object:
        return await channel.declare_queue(exclusive=True)

    acts["declare a queue"] = declare
    async with amqp_as(gateway) as connection:
        for what, act in acts.items():
            channel = await connection.channel()
            refusal = await access_refused(
                lambda act=act, channel=channel: act(channel), what=f"gateway: {what}"
            )
            assert "ACCESS_REFUSED" in refusal, what
    await secured.good_job_verified()


async def test_the_gateway_reads_no_result_and_publishes_no_verdict(
    secured: SecuredFleet,
) -> None:
    """Nodes' results (live, from the guards' consumer, by any get) and heartbeats stay
    out of its reach; it may neither publish a verdict, a receipt, a result or a
    heartbeat, nor read another principal's replies, nor tamper with the streams."""
    gateway, topology, ns = _gateway(secured), secured.topology, secured.admin.namespace
    results, verdicts = topology.results_stream, topology.verdicts_stream
    durable = topology.guard_consumer.durable
    job_id, node = str(uuid.uuid4()), secured.nodes[0]
    received: list[Msg] = []

    async def keep(msg: Msg) -> None:
        received.append(msg)

    async with nats_as(gateway) as watched:
        for subject in (
            f"{ns}.results.>",
            topology.heartbeat_subject("*"),
            ">",
            "_INBOX.>",
            f"_I.{ns}.client.{secured.client.name}.>",
        ):
            await watched.nc.subscribe(subject, cb=keep)
            await watched.refused(subject, what=f"the gateway's subscription to {subject}")
        for api in (
            f"$JS.API.CONSUMER.MSG.NEXT.{results}.{durable}",
            f"$JS.API.STREAM.MSG.GET.{results}",
            f"$JS.API.DIRECT.GET.{results}",
            f"$JS.API.DIRECT.GET.{results}.{topology.results_subject(job_id, node_id=node)}",
            # The body form of a direct get names no subject a permission can see.
            f"$JS.API.DIRECT.GET.{verdicts}",
            f"$JS.API.STREAM.MSG.GET.{verdicts}",
            f"$JS.API.CONSUMER.CREATE.{verdicts}",
            f"$JS.API.STREAM.PURGE.{verdicts}",
            f"$JS.API.STREAM.DELETE.{verdicts}",
        ):
            with pytest.raises(NatsError):
                await watched.nc.request(api, b'{"batch": 1}', timeout=2)
            await watched.refused(api, what=f"the gateway's {api}")
        owner = secured.client.name
        for subject in (
            topology.verdicts_subject(job_id, owner=owner),
            topology.receipt_subject(job_id, owner=owner),
            topology.results_subject(job_id, node_id=secured.nodes[0]),
            topology.heartbeat_subject(secured.nodes[0]),
        ):
            await watched.nc.publish(subject, b"{}")
            await watched.refused(subject, what=f"the gateway's publish on {subject}")
        await secured.good_job_verified()
        await watched.nc.flush()
        assert received == [], [m.subject for m in received]
