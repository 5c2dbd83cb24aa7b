"""NATS and JetStream over nats-py: streams, the guard consumer, deduplicated publishing."""

from __future__ import annotations

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from cortensor.adapters.topology import Topology

MSG_ID_HEADER = "Nats-Msg-Id"


async def connect(url: str, *, name: str) -> NATS:
    """A NATS connection that keeps reconnecting."""
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5)


async def apply_streams(js: JetStreamContext, topology: Topology) -> list[str]:
    """Create or update the streams and the guard's durable consumer (idempotent)."""
    declared = []
    for spec in topology.streams:
        config = StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            storage=StorageType(spec.storage),
            max_age=spec.max_age_s,
            duplicate_window=spec.duplicate_window_s,
        )
        try:
            await js.stream_info(spec.name)
            await js.update_stream(config)
        except NotFoundError:
            await js.add_stream(config)
        declared.append(f"stream {spec.name} {list(spec.subjects)} ({spec.storage})")
    consumer = topology.guard_consumer
    await js.add_consumer(
        consumer.stream,
        ConsumerConfig(
            durable_name=consumer.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=consumer.ack_wait_s,
            max_ack_pending=consumer.max_ack_pending,
        ),
    )
    declared.append(f"consumer {consumer.durable} on {consumer.stream}")
    return declared


async def publish(js: JetStreamContext, subject: str, payload: bytes, *, msg_id: str) -> None:
    """Publish and wait for the stream's ack; the msg id makes a retried publish a no-op."""
    await js.publish(subject, payload, headers={MSG_ID_HEADER: msg_id})
