"""`cortensor top`'s live sources on the real servers: queue depths by passive declare
(RabbitMQ) and heartbeats heard on NATS, for a namespace of this module's own."""

from __future__ import annotations

import aio_pika
import pytest

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.topology import Topology
from cortensor.schemas import NodeHeartbeat, utcnow
from cortensor.settings import Settings
from cortensor.tools.top import Heartbeats, listening, queue_depths
from tests.conftest import eventually

pytestmark = [pytest.mark.rabbitmq, pytest.mark.nats, pytest.mark.postgres]


async def test_queue_depths_count_waiting_messages_and_a_missing_queue_is_none(
    broker_settings: Settings,
) -> None:
    topology = Topology(broker_settings.namespace)
    spec = topology.node_queue("top-1", "cpu-int8")
    connection = await amqp.connect_as(broker_settings)
    try:
        channel = await connection.channel()
        await amqp.declare_queue(channel, spec)
        for i in range(2):
            await channel.default_exchange.publish(
                aio_pika.Message(f"task {i}".encode()), routing_key=spec.name
            )
        missing = topology.node_queue("nobody", "cpu-int8").name
        names = [topology.router_queue, missing, spec.name]
        depths = await queue_depths(connection, names)
        assert depths == {topology.router_queue: 0, missing: None, spec.name: 2}
    finally:
        await connection.close()


async def test_heartbeats_of_the_namespace_are_heard(broker_settings: Settings) -> None:
    beats = Heartbeats()
    topology = Topology(broker_settings.namespace)
    beat = NodeHeartbeat(
        node_id="top-2",
        hw_class="cpu-int8",
        precision="int8",
        tasks=["embed"],
        models=["all-MiniLM-L6-v2"],
        capacity=4,
        inflight=3,
        processed=41,
        started_at=utcnow(),
    )
    async with listening(broker_settings, beats) as deaf:
        assert deaf is None
        nc = await jetstream.connect_as(broker_settings, name="test top")
        try:
            subject = topology.heartbeat_subject("top-2")
            await nc.publish(subject, beat.model_dump_json().encode())
            await nc.flush()
        finally:
            await nc.close()
        heard = await eventually(lambda: beats.latest.get("top-2"), what="the heartbeat")
    assert (heard.inflight, heard.processed) == (3, 41)
