"""Bounded queues and streams on the real servers (docs/design.md, Overload): a full
router queue nacks a client's publish, which the SDK raises as Busy; a full node queue
nacks the router's, which is QueueFull (the node is busy), not Unroutable (gone); a
queue declared by an earlier release without bounds gets them by policy; the streams
refuse new messages at their bound instead of dropping old ones."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace

import aio_pika
import pytest
from nats.js.api import DiscardPolicy

from cortensor.adapters import amqp, bounds, jetstream
from cortensor.adapters.interfaces import QueueFull, Unroutable
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.adapters.topology import Topology
from cortensor.client import Client
from cortensor.errors import Busy
from cortensor.schemas import JobRequest
from cortensor.settings import Settings
from tests.conftest import make_settings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.nats]

LIMIT = 3


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    """A namespace of its own whose router queue holds LIMIT jobs, with no router."""
    settings = make_settings(router_queue_max=LIMIT)
    await setup_brokers(settings)
    yield settings
    await teardown_brokers(settings, [("n1", "cpu-int8")])


async def _depth(settings: Settings, queue: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def _submit_until_busy(
    settings: Settings, tries: int, pause_s: float = 0.0
) -> tuple[int, Busy | None]:
    async with Client(settings) as client:
        for accepted in range(tries):
            try:
                await client.submit(JobRequest(inputs=[f"job {accepted}"]))
            except Busy as exc:
                return accepted, exc
            await asyncio.sleep(pause_s)
    return tries, None


async def test_a_full_router_queue_refuses_jobs_as_busy(settings: Settings) -> None:
    accepted, busy = await _submit_until_busy(settings, LIMIT + 5)
    assert busy is not None, f"{accepted} jobs accepted past a bound of {LIMIT}"
    assert "busy" in str(busy)
    assert "again later" in str(busy)
    # Quorum queues check the bound before they enqueue: at most one past it gets in.
    assert LIMIT <= accepted <= LIMIT + 1
    assert await _depth(settings, Topology(settings.namespace).router_queue) == accepted


async def test_a_full_node_queue_is_busy_not_gone(settings: Settings) -> None:
    topology = Topology(settings.namespace)
    spec = topology.node_queue("n1", "cpu-int8")
    small = replace(spec, arguments={**spec.arguments, "x-max-length": 2})
    connection = await amqp.connect_as(settings)
    async with connection:
        await amqp.declare_queue(await connection.channel(), small)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        publisher = amqp.AmqpTaskPublisher(channel, topology)
        outcomes = []
        for i in range(5):
            try:
                await publisher.publish("cpu-int8", "n1", b"{}", headers={}, message_id=str(i))
                outcomes.append("ok")
            except QueueFull:
                outcomes.append("full")
        with pytest.raises(Unroutable):
            await publisher.publish("cpu-int8", "nobody", b"{}", headers={}, message_id="x")
    assert outcomes[:2] == ["ok", "ok"], outcomes
    assert outcomes[-1] == "full", outcomes


def _clear_policy(name: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "clear_policy", name], check=False, timeout=60)


async def test_a_queue_declared_without_bounds_gets_them_by_policy() -> None:
    settings = make_settings(router_queue_max=LIMIT)
    topology = Topology(settings.namespace)
    router = next(q for q in topology.queues if q.role == "router")
    legacy = replace(
        router,
        arguments={k: v for k, v in router.arguments.items() if k not in bounds.POLICY_KEYS},
    )
    connection = await amqp.connect_as(settings)
    async with connection:
        channel = await connection.channel()
        await amqp.apply_topology(channel, topology, queues=[legacy])
    try:
        declared = await setup_brokers(settings)  # redeclaring would fail PRECONDITION
        assert any(bounds.policy_name(router) in line for line in declared), declared
        # The policy reaches the queue shortly after it is set: submit until refused.
        accepted, busy = await _submit_until_busy(settings, 200, pause_s=0.05)
        assert busy is not None, f"{accepted} jobs accepted past a policy bound of {LIMIT}"
        again, still_busy = await _submit_until_busy(settings, 1)
        assert again == 0
        assert still_busy is not None
    finally:
        await teardown_brokers(settings)
        await asyncio.to_thread(_clear_policy, bounds.policy_name(router))


async def test_streams_refuse_new_messages_at_their_bound(settings: Settings) -> None:
    topology = Topology(settings.namespace)
    nc = await jetstream.connect_as(settings, name="test-bounds")
    try:
        js = nc.jetstream()
        for spec in topology.streams:
            config = (await js.stream_info(spec.name)).config
            assert config.max_msgs == spec.max_msgs > 0
            assert config.discard == DiscardPolicy.NEW
    finally:
        await nc.drain()
