"""Attacks on RabbitMQ with a node's or a client's own credentials: each is refused by
the broker (ACCESS_REFUSED closes the channel), and the client's next job is verified.

Seen before the fleet ran secured: a queue bound to another node's routing key read
that node's assignments; every process shared the guest login, so any of them could do
anything.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from cortensor.schemas import JobRequest
from tests.conftest import eventually
from tests.security.harness import (
    FLEET_MARKS,
    HW_CLASS,
    Principal,
    SecuredFleet,
    access_refused,
    amqp_as,
)

pytestmark = FLEET_MARKS


def _message(body: bytes = b"{}") -> aio_pika.Message:
    return aio_pika.Message(body, message_id=str(uuid.uuid4()))


Act = Callable[[AbstractChannel], Awaitable[object]]
"""One AMQP act on a channel."""


async def _refused_on_new_channel(principal: Principal, act_name: str, act: Act) -> str:
    """RabbitMQ's refusal of `act`, made on a channel of its own with `principal`'s login."""
    async with amqp_as(principal) as connection:
        channel = await connection.channel()
        return await access_refused(lambda: act(channel), what=f"{principal.name}: {act_name}")


async def test_node_cannot_consume_another_nodes_queue(secured: SecuredFleet) -> None:
    victim = secured.topology.node_queue(secured.nodes[0], HW_CLASS).name

    async def steal(message: AbstractIncomingMessage) -> None:
        await message.ack()

    async def consume(channel: AbstractChannel) -> object:
        queue = await channel.get_queue(victim, ensure=False)
        return await queue.consume(steal)

    async def get(channel: AbstractChannel) -> object:
        queue = await channel.get_queue(victim, ensure=False)
        return await queue.get(fail=False)

    for name, act in (("consume", consume), ("basic.get", get)):
        refusal = await _refused_on_new_channel(secured.attacker, f"{name} {victim}", act)
        assert "ACCESS_REFUSED" in refusal
        assert victim in refusal
    await secured.good_job_verified()


async def test_node_cannot_declare_a_queue(secured: SecuredFleet) -> None:
    """A spy queue (server-named and exclusive, or named like a node's) cannot be made."""
    spy = secured.topology.node_queue("spy-1", HW_CLASS).name

    async def server_named(channel: AbstractChannel) -> object:
        return await channel.declare_queue(exclusive=True)

    async def named(channel: AbstractChannel) -> object:
        return await channel.declare_queue(spy, durable=True)

    async def exchange(channel: AbstractChannel) -> object:
        return await channel.declare_exchange(f"{secured.admin.namespace}.spy", "fanout")

    for name, act in (("queue", server_named), ("named queue", named), ("exchange", exchange)):
        refusal = await _refused_on_new_channel(secured.attacker, f"declare {name}", act)
        assert "ACCESS_REFUSED" in refusal
    await secured.good_job_verified()


async def test_node_cannot_bind_to_another_nodes_routing_key(secured: SecuredFleet) -> None:
    """The attack seen: a queue bound to another node's key read its assignments. Even
    the attacker's own queue cannot be bound to the victim's key."""
    own = secured.topology.node_queue(secured.attacker.name, HW_CLASS).name
    exchange = secured.topology.hw_exchange(HW_CLASS)

    async def bind(channel: AbstractChannel) -> object:
        queue = await channel.get_queue(own, ensure=False)
        return await queue.bind(exchange, routing_key=secured.nodes[0])

    refusal = await _refused_on_new_channel(secured.attacker, "bind own queue", bind)
    assert "ACCESS_REFUSED" in refusal
    await secured.good_job_verified()


async def test_node_cannot_publish_assignments_or_jobs(secured: SecuredFleet) -> None:
    """A node cannot hand a peer a forged assignment, nor submit jobs as a client, by
    the jobs exchange or straight into the router's queue."""
    topology = secured.topology

    async def assignment(channel: AbstractChannel) -> object:
        ex = await channel.get_exchange(topology.hw_exchange(HW_CLASS), ensure=False)
        return await ex.publish(_message(), routing_key=secured.nodes[0])

    async def job(channel: AbstractChannel) -> object:
        ex = await channel.get_exchange(topology.jobs_exchange, ensure=False)
        return await ex.publish(_message(), routing_key=topology.jobs_routing_key("attacker-1"))

    async def dead_letter(channel: AbstractChannel) -> object:
        ex = await channel.get_exchange(topology.dead_letter_exchange, ensure=False)
        return await ex.publish(_message(), routing_key="")

    async def router_queue(channel: AbstractChannel) -> object:
        # Straight into the router's queue through the default exchange, past the
        # routing key that names a job's owner.
        return await channel.default_exchange.publish(_message(), routing_key=topology.router_queue)

    for name, act in (
        ("assignment", assignment),
        ("job", job),
        ("dead letter", dead_letter),
        ("router queue", router_queue),
    ):
        refusal = await _refused_on_new_channel(secured.attacker, f"publish {name}", act)
        assert "ACCESS_REFUSED" in refusal
    await secured.good_job_verified()


async def test_client_cannot_publish_as_another_owner(secured: SecuredFleet) -> None:
    """Topic permissions pin a client's routing key to job.<its name>: mallory cannot
    submit jobs whose verdicts would go to alice (or to nobody in particular)."""
    topology = secured.topology
    for key in (
        topology.jobs_routing_key(secured.client.name),
        topology.jobs_routing_key("anonymous"),
        "job.#",
        "router",
    ):

        async def publish(channel: AbstractChannel, key: str = key) -> object:
            ex = await channel.get_exchange(topology.jobs_exchange, ensure=False)
            body = JobRequest(inputs=["as someone else"]).model_dump_json().encode()
            return await ex.publish(_message(body), routing_key=key)

        refusal = await _refused_on_new_channel(secured.other_client, f"publish {key}", publish)
        assert "ACCESS_REFUSED" in refusal
    await secured.good_job_verified()


async def test_client_cannot_read_or_route_around_the_router(secured: SecuredFleet) -> None:
    """A client reads no queue (the router's, a node's, the dead letters), declares
    nothing, and cannot publish assignments to nodes directly."""
    topology = secured.topology
    queues = (
        topology.router_queue,
        topology.dead_letter_queue,
        topology.node_queue(secured.nodes[0], HW_CLASS).name,
    )
    for name in queues:

        async def get(channel: AbstractChannel, name: str = name) -> object:
            queue = await channel.get_queue(name, ensure=False)
            return await queue.get(fail=False)

        refusal = await _refused_on_new_channel(secured.other_client, f"get {name}", get)
        assert "ACCESS_REFUSED" in refusal

    async def declare(channel: AbstractChannel) -> object:
        return await channel.declare_queue(exclusive=True)

    async def assignment(channel: AbstractChannel) -> object:
        ex = await channel.get_exchange(topology.hw_exchange(HW_CLASS), ensure=False)
        return await ex.publish(_message(), routing_key=secured.nodes[0])

    for what, act in (("declare", declare), ("assignment", assignment)):
        refusal = await _refused_on_new_channel(secured.other_client, what, act)
        assert "ACCESS_REFUSED" in refusal
    await secured.good_job_verified()


async def test_every_principal_has_a_login_of_its_own(secured: SecuredFleet) -> None:
    """No shared guest login: each credential names a RabbitMQ user of its own, and the
    fleet's router and nodes are connected as their own users."""
    holders = [secured.attacker, secured.client, secured.other_client]
    users = [_user(p.settings.amqp_url) for p in holders]
    assert len(set(users)) == len(users), users
    assert "guest" not in users
    namespace = secured.admin.namespace
    connected = await eventually(
        lambda: _connected_users(namespace), what="the fleet's connections listed"
    )
    expected = {f"{namespace}.node.{node}" for node in secured.nodes}
    expected.add(_user(secured.operators["router"].settings.amqp_url))
    assert expected <= connected, sorted(connected)
    await secured.good_job_verified()


def _user(url: str) -> str:
    """The user name an AMQP URL logs in as."""
    return unquote(urlsplit(url).username or "")


def _connected_users(namespace: str) -> set[str]:
    """The users of the namespace connected to RabbitMQ now."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", "list_connections", "user"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {u.strip() for u in done.stdout.splitlines() if u.strip().startswith(f"{namespace}.")}
