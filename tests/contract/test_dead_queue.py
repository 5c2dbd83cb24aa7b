"""The dead-letter side the router's dead-letter reader relies on, asserted against the
real server and the twin: a job dead-lettered by the router keeps its routing key (its
owner) and its reason; one dead-lettered by the router queue's delivery limit carries an
`x-death` entry naming that queue; the reader settles dead letters by hand and parks
what it cannot end in the parked queue, with its headers."""

from __future__ import annotations

from cortensor.adapters.amqp import FAULT_HEADER, REASON_HEADER
from cortensor.adapters.interfaces import DeadLetterQueue
from cortensor.protocol.dead import death_of
from tests.contract.sides import CLIENT, AmqpSide
from tests.contract.test_work_queues import Inbox, consume, got


async def reading(dead: DeadLetterQueue, rabbit: AmqpSide) -> Inbox:
    inbox = Inbox(rabbit.quiet_s)
    await dead.consume(inbox.handler)
    return inbox


async def test_a_job_the_router_dead_letters_keeps_its_owner_and_its_reason(
    rabbit: AmqpSide,
) -> None:
    jobs, close_jobs = await rabbit.work_queue()
    key = rabbit.topology.jobs_routing_key(CLIENT)
    await jobs.dead_letter(
        b"{}", "BadInput: no", message_id="j1", routing_key=key, input_at_fault=True
    )
    dead, close_dead = await rabbit.dead_letters(prefetch=4)
    inbox = await reading(dead, rabbit)
    delivery = await inbox.next()
    assert (delivery.body, delivery.message_id, delivery.routing_key) == (b"{}", "j1", key)
    assert delivery.headers[REASON_HEADER] == "BadInput: no"
    assert delivery.headers[FAULT_HEADER] == "input"
    assert death_of(delivery.headers, rabbit.topology.router_queue) is None
    await delivery.ack()
    assert await inbox.quiet()
    await close_dead()
    await close_jobs()


async def test_a_job_past_the_delivery_limit_names_the_router_queue_in_x_death(
    rabbit: AmqpSide,
) -> None:
    jobs, close_jobs = await rabbit.work_queue(prefetch=10)
    inbox = await consume(jobs, rabbit)
    await rabbit.publish_job(b"always fails", message_id="j2")
    for _ in range(rabbit.topology.router_delivery_limit + 1):
        await (await inbox.next()).nack(requeue=True)
    dead = await got(rabbit, rabbit.topology.dead_letter_queue)
    death = death_of(dead.headers, rabbit.topology.router_queue)
    assert death is not None
    assert (death.queue, death.reason) == (rabbit.topology.router_queue, "delivery_limit")
    assert death.count == 1
    assert death.at is not None
    assert dead.routing_key == death.routing_key == rabbit.topology.jobs_routing_key(CLIENT)
    await close_jobs()


async def test_the_reader_parks_a_message_with_its_headers_and_settles_by_hand(
    rabbit: AmqpSide,
) -> None:
    jobs, close_jobs = await rabbit.work_queue()
    await jobs.dead_letter(b"\x00junk", "not JSON", message_id="j3", routing_key="job.")
    dead, close_dead = await rabbit.dead_letters(prefetch=4)
    inbox = await reading(dead, rabbit)
    first = await inbox.next()
    await first.nack(requeue=True)  # not settled: delivered again
    again = await inbox.next()
    assert (again.body, again.redelivered) == (b"\x00junk", True)
    await dead.park(
        again.body,
        message_id="j3",
        routing_key=again.routing_key or "",
        headers={REASON_HEADER: "not JSON", "x-cortensor-deliveries": 1},
    )
    await again.ack()
    parked = await got(rabbit, rabbit.topology.parked_queue)
    assert (parked.body, parked.message_id, parked.routing_key) == (b"\x00junk", "j3", "job.")
    assert parked.headers[REASON_HEADER] == "not JSON"
    assert parked.headers["x-cortensor-deliveries"] == 1
    assert await rabbit.get(rabbit.topology.dead_letter_queue) is None
    await close_dead()
    await close_jobs()


async def test_a_dead_letter_in_hand_goes_back_when_its_reader_goes(rabbit: AmqpSide) -> None:
    jobs, close_jobs = await rabbit.work_queue()
    await jobs.dead_letter(b"held", "why", message_id="j4")
    dead, close_dead = await rabbit.dead_letters(prefetch=4)
    inbox = await reading(dead, rabbit)
    assert (await inbox.next()).body == b"held"
    await close_dead()  # a router that stopped with it in hand
    back = await got(rabbit, rabbit.topology.dead_letter_queue)
    assert back.body == b"held"
    await close_jobs()
