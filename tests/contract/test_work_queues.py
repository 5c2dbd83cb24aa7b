"""The RabbitMQ side the router relies on, asserted against the real server and the twin:
tasks reach a node's queue or raise Unroutable; jobs are routed by topic and consumed at
least once, with their routing key, manual settlement, redelivery, a prefetch bound and
dead letters."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from cortensor.adapters.amqp import REASON_HEADER
from cortensor.adapters.interfaces import Delivery, JobQueue, QueueFull, Unroutable
from cortensor.adapters.memory.queues import DEATH_REASON_HEADER
from cortensor.adapters.topology import QueueSpec
from tests.conftest import eventually
from tests.contract.sides import CLIENT, AmqpSide, Got


class Inbox:
    """A consumer's deliveries, in arrival order."""

    def __init__(self, quiet_s: float) -> None:
        self.quiet_s = quiet_s
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()

    async def handler(self, delivery: Delivery) -> None:
        self.queue.put_nowait(delivery)

    async def next(self, wait_s: float = 10.0) -> Delivery:
        return await asyncio.wait_for(self.queue.get(), wait_s)

    async def quiet(self) -> bool:
        """True when nothing arrives for the side's quiet time."""
        try:
            await asyncio.wait_for(self.queue.get(), self.quiet_s)
        except TimeoutError:
            return True
        return False


async def consume(jobs: JobQueue, rabbit: AmqpSide) -> Inbox:
    inbox = Inbox(rabbit.quiet_s)
    await jobs.consume(inbox.handler)
    return inbox


async def got(rabbit: AmqpSide, queue: str) -> Got:
    return await eventually(lambda: rabbit.get(queue), what=f"a message on {queue}")


def ident() -> str:
    return uuid.uuid4().hex


async def test_a_task_reaches_its_nodes_queue_with_its_headers(rabbit: AmqpSide) -> None:
    queue = await rabbit.declare_node_queue("n1", "cpu-int8")
    await rabbit.tasks.publish(
        "cpu-int8", "n1", b'{"x":1}', headers={"task": "t", "id": "i1"}, message_id="i1"
    )
    message = await got(rabbit, queue)
    assert message.body == b'{"x":1}'
    assert message.headers["task"] == "t"
    assert message.message_id == "i1"


async def test_a_task_for_a_node_without_a_queue_is_unroutable(rabbit: AmqpSide) -> None:
    with pytest.raises(Unroutable):
        await rabbit.tasks.publish("cpu-int8", "nobody", b"{}", headers={}, message_id=ident())
    # A queue under another class does not take it either.
    await rabbit.declare_node_queue("n2", "cpu-fp32")
    with pytest.raises(Unroutable):
        await rabbit.tasks.publish("cpu-int8", "n2", b"{}", headers={}, message_id=ident())
    # After Unroutable the publisher still works.
    queue = await rabbit.declare_node_queue("n3", "cpu-int8")
    await rabbit.tasks.publish("cpu-int8", "n3", b"ok", headers={}, message_id=ident())
    assert (await got(rabbit, queue)).body == b"ok"


async def test_a_full_node_queue_refuses_a_task_and_takes_one_once_there_is_room(
    rabbit: AmqpSide,
) -> None:
    """Bounded queues (docs/design.md, Overload): reject-publish refuses with QueueFull,
    never Unroutable, and never drops what the queue holds."""
    bound = {"x-max-length": 2, "x-overflow": "reject-publish"}
    queue = await rabbit.declare_node_queue("full", "cpu-int8", bound)
    outcomes = []
    for _ in range(4):  # a real quorum queue may take one past its bound first
        try:
            await rabbit.tasks.publish("cpu-int8", "full", b"t", headers={}, message_id=ident())
            outcomes.append("taken")
        except QueueFull:
            outcomes.append("full")
    taken = outcomes.count("taken")
    assert outcomes[-1] == "full", outcomes
    assert taken in (2, 3), outcomes
    for _ in range(taken):
        assert (await got(rabbit, queue)).body == b"t"
    await rabbit.tasks.publish("cpu-int8", "full", b"room", headers={}, message_id=ident())
    assert (await got(rabbit, queue)).body == b"room"


async def test_a_job_is_delivered_with_its_id_and_an_acked_one_never_again(
    rabbit: AmqpSide,
) -> None:
    jobs, close = await rabbit.work_queue(prefetch=10)
    inbox = await consume(jobs, rabbit)
    await rabbit.publish_job(b"first", message_id="j1")
    first = await inbox.next()
    assert (first.body, first.message_id, first.redelivered) == (b"first", "j1", False)
    assert first.routing_key == rabbit.topology.jobs_routing_key(CLIENT)
    await first.ack()
    await close()
    # A new consumer gets the next job, not the acked one back.
    again, close_again = await rabbit.work_queue(prefetch=10)
    inbox = await consume(again, rabbit)
    await rabbit.publish_job(b"marker", message_id="j2")
    assert (await inbox.next()).body == b"marker"
    assert await inbox.quiet()
    await close_again()


TOPIC_KEYS = ("job.alice", "job.a.b", "job", "job.", "jobs.alice", "x.job.alice", "", "a.b.c")
TOPIC_ROUTES = {
    "job.*": {"job.alice", "job."},
    "#.alice": {"job.alice", "jobs.alice", "x.job.alice"},
    "job.#": {"job.alice", "job.a.b", "job", "job."},
    "*.b.#": {"a.b.c"},
    "#": set(TOPIC_KEYS),
}
"""Binding pattern -> the keys it takes: `*` is one word (an empty one too), `#` any
number of words, none included; an empty key has no words."""


async def test_the_jobs_exchange_routes_by_topic(rabbit: AmqpSide) -> None:
    exchange, ns = rabbit.topology.jobs_exchange, rabbit.topology.namespace
    queues = {pattern: f"{ns}.topic-{i}" for i, pattern in enumerate(TOPIC_ROUTES)}
    for pattern, name in queues.items():
        await rabbit.declare_queue(QueueSpec(name, exchange, pattern, {}))
    for key in TOPIC_KEYS:
        await rabbit.publish(exchange, key, b"{}", message_id=f"key:{key}")
    # Publishes are confirmed: every queue holds what it took by now.
    for pattern, name in queues.items():
        taken = set()
        while (message := await rabbit.get(name)) is not None:
            assert message.message_id is not None
            taken.add(message.message_id.removeprefix("key:"))
        assert taken == TOPIC_ROUTES[pattern], pattern


async def test_a_nacked_job_comes_back_marked_redelivered(rabbit: AmqpSide) -> None:
    jobs, close = await rabbit.work_queue(prefetch=10)
    inbox = await consume(jobs, rabbit)
    await rabbit.publish_job(b"retry me", message_id="j1")
    await (await inbox.next()).nack(requeue=True)
    again = await inbox.next()
    assert (again.body, again.message_id, again.redelivered) == (b"retry me", "j1", True)
    await again.ack()
    assert await inbox.quiet()
    await close()


async def test_a_job_unsettled_when_its_consumer_goes_away_goes_to_another(
    rabbit: AmqpSide,
) -> None:
    crashing, crash = await rabbit.work_queue(prefetch=10)
    inbox = await consume(crashing, rabbit)
    await rabbit.publish_job(b"in hand", message_id="j1")
    await inbox.next()
    await crash()
    survivor, close = await rabbit.work_queue(prefetch=10)
    again = await (await consume(survivor, rabbit)).next()
    assert (again.body, again.redelivered) == (b"in hand", True)
    await again.ack()
    await close()


async def test_a_rejected_job_is_dead_lettered(rabbit: AmqpSide) -> None:
    jobs, close = await rabbit.work_queue(prefetch=10)
    inbox = await consume(jobs, rabbit)
    await rabbit.publish_job(b"poison", message_id="j1")
    await (await inbox.next()).nack(requeue=False)
    dead = await got(rabbit, rabbit.topology.dead_letter_queue)
    assert (dead.body, dead.message_id) == (b"poison", "j1")
    assert dead.headers[DEATH_REASON_HEADER] == "rejected"
    assert dead.routing_key == rabbit.topology.jobs_routing_key(CLIENT)
    assert await inbox.quiet()
    await close()


async def test_dead_letter_parks_a_message_with_its_reason(rabbit: AmqpSide) -> None:
    jobs, close = await rabbit.work_queue()
    await jobs.dead_letter(b"not json", "body is not JSON", message_id="bad-1")
    dead = await got(rabbit, rabbit.topology.dead_letter_queue)
    assert (dead.body, dead.message_id) == (b"not json", "bad-1")
    assert dead.headers[REASON_HEADER] == "body is not JSON"
    await close()


async def test_a_job_returned_past_the_delivery_limit_is_dead_lettered(
    rabbit: AmqpSide,
) -> None:
    [router_queue] = [q for q in rabbit.topology.queues if q.role == "router"]
    limit = int(router_queue.arguments["x-delivery-limit"])
    jobs, close = await rabbit.work_queue(prefetch=10)
    inbox = await consume(jobs, rabbit)
    await rabbit.publish_job(b"always fails", message_id="j1")
    deliveries = 0
    while await rabbit.get(rabbit.topology.dead_letter_queue) is None or not deliveries:
        try:
            delivery = await inbox.next(wait_s=rabbit.quiet_s)
        except TimeoutError:
            continue
        deliveries += 1
        assert deliveries <= limit + 1, "delivered past the limit"
        await delivery.nack(requeue=True)
    assert deliveries == limit + 1
    await close()


async def test_a_consumer_holds_no_more_than_its_prefetch(rabbit: AmqpSide) -> None:
    jobs, close = await rabbit.work_queue(prefetch=2)
    inbox = await consume(jobs, rabbit)
    for i in range(3):
        await rabbit.publish_job(f"job {i}".encode(), message_id=f"j{i}")
    held = [await inbox.next(), await inbox.next()]
    assert await inbox.quiet(), "a third job came while two were unsettled"
    await held[0].ack()
    third = await inbox.next()
    assert {d.body for d in [*held, third]} == {b"job 0", b"job 1", b"job 2"}
    for d in [held[1], third]:
        await d.ack()
    await close()


async def test_competing_consumers_each_get_a_job_never_the_same(rabbit: AmqpSide) -> None:
    a_jobs, close_a = await rabbit.work_queue(prefetch=1)
    b_jobs, close_b = await rabbit.work_queue(prefetch=1)
    a, b = await consume(a_jobs, rabbit), await consume(b_jobs, rabbit)
    for i in range(4):
        await rabbit.publish_job(f"job {i}".encode(), message_id=f"j{i}")
    # Each holds one: the other must be served meanwhile.
    first_a, first_b = await a.next(), await b.next()
    assert first_a.body != first_b.body
    seen = [first_a.body, first_b.body]
    await first_a.ack()
    await first_b.ack()
    for inbox in (a, b):
        delivery = await inbox.next()
        seen.append(delivery.body)
        await delivery.ack()
    assert sorted(seen) == [f"job {i}".encode() for i in range(4)]
    assert await a.quiet()
    assert await b.quiet()
    await close_a()
    await close_b()


async def test_cancel_stops_delivery_but_jobs_in_hand_settle(rabbit: AmqpSide) -> None:
    jobs, close = await rabbit.work_queue(prefetch=10)
    inbox = await consume(jobs, rabbit)
    await rabbit.publish_job(b"in hand", message_id="j1")
    held = await inbox.next()
    await jobs.cancel()
    await rabbit.publish_job(b"after cancel", message_id="j2")
    assert await inbox.quiet()
    await held.ack()
    other, close_other = await rabbit.work_queue(prefetch=10)
    next_one = await (await consume(other, rabbit)).next()
    assert next_one.body == b"after cancel"
    await next_one.ack()
    await close()
    await close_other()
