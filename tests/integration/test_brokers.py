"""The broker topology on the real RabbitMQ and NATS JetStream: setup, teardown, helpers.

The module's namespace is set up once; the tests of setup and teardown themselves
make a namespace of their own. Checks go through plain (non-robust) connections so
that a channel the broker closes on purpose is not reopened behind the test's back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, DeliverPolicy, StorageType
from nats.js.errors import NotFoundError
from pamqp.commands import Basic

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.adapters.topology import Topology
from cortensor.settings import Settings
from tests.conftest import make_settings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.nats]


@pytest.fixture(scope="module")
async def settings() -> AsyncIterator[Settings]:
    """A namespace of this module's own, with its topology applied."""
    settings = make_settings()
    await setup_brokers(settings)
    yield settings
    await teardown_brokers(settings)


@pytest.fixture(scope="module")
def topology(settings: Settings) -> Topology:
    return Topology(settings.namespace)


@pytest.fixture
async def rabbit(settings: Settings) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(settings.amqp_url)
    yield connection
    await connection.close()


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    client = await jetstream.connect(settings.nats_url, name="test-brokers")
    yield client
    await client.drain()


async def next_message(queue: AbstractQueue, within: float = 5.0) -> AbstractIncomingMessage:
    """The next message on a queue, waiting for it (dead-lettering is asynchronous)."""
    async with asyncio.timeout(within):
        while True:
            message = await queue.get(no_ack=False, fail=False)
            if message is not None:
                return message
            await asyncio.sleep(0.02)


async def queue_exists(connection: AbstractConnection, name: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
    except ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


async def exchange_exists(connection: AbstractConnection, name: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, passive=True)
    except ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


async def stream_exists(js: JetStreamContext, name: str) -> bool:
    try:
        await js.stream_info(name)
    except NotFoundError:
        return False
    return True


# -- setup and teardown ---------------------------------------------------------------------


async def test_setup_is_idempotent_and_teardown_removes_everything() -> None:
    settings = make_settings()
    topology = Topology(settings.namespace)
    first = await setup_brokers(settings)
    connection = await aio_pika.connect(settings.amqp_url)
    nc = await jetstream.connect(settings.nats_url, name="test-setup")
    js = nc.jetstream()
    try:
        # Something in flight when setup runs again must survive it.
        channel = await connection.channel()
        jobs = await channel.get_exchange(topology.jobs_exchange)
        await jobs.publish(
            amqp.json_message(b"{}", message_id="kept"),
            routing_key=topology.jobs_routing_key("client-1"),
        )
        subject = topology.results_subject(str(uuid.uuid4()), node_id="n1")
        await jetstream.publish(js, subject, b"{}", msg_id="kept")

        second = await setup_brokers(settings)

        assert second == first
        assert f"queue {topology.router_queue} <- {topology.jobs_exchange}[job.*]" in first
        assert f"consumer {topology.guard_consumer.durable} on {topology.results_stream}" in first
        router_queue = await channel.declare_queue(topology.router_queue, passive=True)
        assert router_queue.declaration_result.message_count == 1
        assert (await js.stream_info(topology.results_stream)).state.messages == 1
        for exchange in topology.exchanges:
            assert await exchange_exists(connection, exchange.name), exchange.name
        for stream in topology.streams:
            assert await stream_exists(js, stream.name), stream.name

        await teardown_brokers(settings)

        for queue in topology.queues:
            assert not await queue_exists(connection, queue.name), queue.name
        for exchange in topology.exchanges:
            assert not await exchange_exists(connection, exchange.name), exchange.name
        for stream in topology.streams:
            with pytest.raises(NotFoundError):
                await js.stream_info(stream.name)
        # Tearing down what is gone already is not an error.
        await teardown_brokers(settings)
    finally:
        await nc.drain()
        await connection.close()
        await teardown_brokers(settings)


async def test_teardown_removes_the_node_queues_it_is_told_of() -> None:
    settings = make_settings()
    topology = Topology(settings.namespace)
    await setup_brokers(settings)
    node_queue = topology.node_queue("node-1", "cpu-int8")
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        await amqp.declare_queue(await connection.channel(), node_queue)
        assert await queue_exists(connection, node_queue.name)

        await teardown_brokers(settings, node_ids=[("node-1", "cpu-int8")])

        assert not await queue_exists(connection, node_queue.name)
    finally:
        await connection.close()
        await teardown_brokers(settings, node_ids=[("node-1", "cpu-int8")])


# -- RabbitMQ -------------------------------------------------------------------------------


async def test_the_router_queue_is_a_quorum_queue_with_the_dead_letter_exchange(
    rabbit: AbstractConnection, topology: Topology
) -> None:
    [spec] = [q for q in topology.queues if q.name == topology.router_queue]
    assert spec.arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": topology.dead_letter_exchange,
        "x-delivery-limit": 5,
        # Bounded (docs/design.md, Overload); setup applies Settings.router_queue_max,
        # whose default is the topology's.
        "x-max-length": 5000,
        "x-max-length-bytes": 1024 * 1024 * 1024,
        "x-overflow": "reject-publish",
    }
    # The same declaration is accepted; any other type or dead-letter exchange is refused.
    channel = await rabbit.channel()
    await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
    await channel.close()
    for different in (
        {**spec.arguments, "x-queue-type": "classic"},
        {**spec.arguments, "x-dead-letter-exchange": "elsewhere"},
    ):
        channel = await rabbit.channel()
        with pytest.raises(ChannelPreconditionFailed, match="inequivalent arg"):
            await channel.declare_queue(spec.name, durable=True, arguments=different)


async def test_a_rejected_job_is_dead_lettered(
    rabbit: AbstractConnection, topology: Topology
) -> None:
    channel = await rabbit.channel()
    jobs = await channel.get_exchange(topology.jobs_exchange)
    message_id = str(uuid.uuid4())
    await jobs.publish(
        amqp.json_message(b'{"poison": true}', message_id=message_id),
        routing_key=topology.jobs_routing_key("client-1"),
    )
    router_queue = await channel.declare_queue(topology.router_queue, passive=True)
    dead_queue = await channel.declare_queue(topology.dead_letter_queue, passive=True)

    taken = await next_message(router_queue)
    assert taken.message_id == message_id
    await taken.reject(requeue=False)
    dead = await next_message(dead_queue)
    await dead.ack()

    assert (dead.message_id, dead.body) == (message_id, b'{"poison": true}')
    [death] = dead.headers["x-death"]  # type: ignore[misc]
    assert death["reason"] == "rejected"  # type: ignore[index]
    assert death["queue"] == topology.router_queue  # type: ignore[index]


async def test_dead_letter_parks_a_message_with_its_reason(
    rabbit: AbstractConnection, topology: Topology
) -> None:
    channel = await rabbit.channel()
    message_id = str(uuid.uuid4())
    reason = "not JSON: " + "x" * 2000

    await amqp.dead_letter(channel, topology, b"\x00garbage", reason, message_id=message_id)

    dead_queue = await channel.declare_queue(topology.dead_letter_queue, passive=True)
    parked = await next_message(dead_queue)
    await parked.ack()
    assert (parked.message_id, parked.body) == (message_id, b"\x00garbage")
    assert parked.headers[amqp.REASON_HEADER] == reason[:1000]
    assert parked.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_a_persistent_json_message_round_trips(
    rabbit: AbstractConnection, topology: Topology
) -> None:
    channel = await rabbit.channel(publisher_confirms=True)
    jobs = await channel.get_exchange(topology.jobs_exchange)
    message_id = str(uuid.uuid4())
    body = b'{"inputs": ["h\xc3\xa9llo"]}'

    confirmation = await jobs.publish(
        amqp.json_message(body, message_id=message_id, headers={"x-origin": "test"}),
        routing_key=topology.jobs_routing_key("client-1"),
    )

    assert isinstance(confirmation, Basic.Ack), confirmation
    router_queue = await channel.declare_queue(topology.router_queue, passive=True)
    received = await next_message(router_queue)
    await received.ack()
    assert received.body == body
    assert received.message_id == message_id
    assert received.routing_key == "job.client-1"
    assert (received.content_type, received.content_encoding) == ("application/json", "utf-8")
    assert received.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert received.headers["x-origin"] == "test"


async def test_a_node_queue_receives_its_own_assignments_only(
    rabbit: AbstractConnection, topology: Topology
) -> None:
    channel = await rabbit.channel()
    mine, other = topology.node_queue("n-a", "cpu-fp32"), topology.node_queue("n-b", "cpu-fp32")
    try:
        await amqp.declare_queue(channel, mine)
        await amqp.declare_queue(channel, other)
        exchange = await channel.get_exchange(topology.hw_exchange("cpu-fp32"))

        await exchange.publish(amqp.json_message(b"{}", message_id="for-a"), routing_key="n-a")

        received = await next_message(await channel.declare_queue(mine.name, passive=True))
        await received.ack()
        assert received.message_id == "for-a"
        other_queue = await channel.declare_queue(other.name, passive=True)
        assert other_queue.declaration_result.message_count == 0
    finally:
        await channel.queue_delete(mine.name)
        await channel.queue_delete(other.name)


# -- JetStream ------------------------------------------------------------------------------


async def test_streams_are_on_disk_and_the_guard_consumer_is_durable(
    nc: NATS, topology: Topology
) -> None:
    js = nc.jetstream()
    results = await js.stream_info(topology.results_stream)
    verdicts = await js.stream_info(topology.verdicts_stream)

    for info, subject in ((results, "results"), (verdicts, "verdicts")):
        assert info.config.storage == StorageType.FILE
        assert info.config.subjects == [f"{topology.namespace}.{subject}.>"]
        assert info.config.duplicate_window == 300
    # Both carry user content: kept for the retention period (Settings.retention_h, 24 h).
    assert (results.config.max_age, verdicts.config.max_age) == (86400, 86400)

    consumer = await js.consumer_info(topology.results_stream, topology.guard_consumer.durable)
    assert consumer.config.durable_name == topology.guard_consumer.durable
    assert consumer.config.ack_policy == AckPolicy.EXPLICIT
    assert consumer.config.deliver_policy == DeliverPolicy.ALL
    # Short, so that what a dead guard held comes back soon (guards renew it while they work).
    assert consumer.config.ack_wait == 10
    assert consumer.config.max_ack_pending == 1000


async def test_a_retried_publish_is_stored_once(nc: NATS, topology: Topology) -> None:
    js = nc.jetstream()
    subject = topology.results_subject(str(uuid.uuid4()), node_id="n1")
    msg_id = str(uuid.uuid4())

    await jetstream.publish(js, subject, b'{"n": 1}', msg_id=msg_id)
    await jetstream.publish(js, subject, b'{"n": 1}', msg_id=msg_id)
    await jetstream.publish(js, subject, b'{"n": 2}', msg_id=str(uuid.uuid4()))

    info = await js.stream_info(topology.results_stream, subjects_filter=subject)
    assert info.state.subjects == {subject: 2}
    first = await js.get_msg(topology.results_stream, subject=subject, seq=1, next=True)
    assert first.data == b'{"n": 1}'
    assert first.headers is not None
    assert first.headers[jetstream.MSG_ID_HEADER] == msg_id


async def test_a_published_result_reaches_the_guard_consumer(nc: NATS, topology: Topology) -> None:
    js = nc.jetstream()
    subject = topology.results_subject(str(uuid.uuid4()), node_id="n1")
    await jetstream.publish(js, subject, b'{"mine": true}', msg_id=str(uuid.uuid4()))
    consumer = topology.guard_consumer
    psub = await js.pull_subscribe_bind(durable=consumer.durable, stream=consumer.stream)
    try:
        seen = []
        async with asyncio.timeout(5):
            while subject not in seen:
                for msg in await psub.fetch(10, timeout=2):
                    seen.append(msg.subject)
                    await msg.ack()
    finally:
        await psub.unsubscribe()

    assert seen.count(subject) == 1
