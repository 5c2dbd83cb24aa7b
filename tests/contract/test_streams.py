"""The NATS side the guard, the router and the announcer rely on, asserted against the
real server and the twin: stream publishing deduplicated by message id; a durable pull
consumer shared by fetchers, with explicit acks, redelivery, term, in-progress renewal,
a bound on what is out unacked and the stored time of the oldest untaken message; core
publish/subscribe for heartbeats."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from cortensor.adapters.interfaces import Signal, StreamConsumer, StreamMessage
from cortensor.schemas import utcnow
from tests.conftest import eventually
from tests.contract.sides import NatsSide


def subject(nats_side: NatsSide, job: str) -> str:
    return nats_side.topology.results_subject(job, node_id="n1")


async def fetch_one(fetcher: StreamConsumer, wait_s: float = 5.0) -> StreamMessage:
    [msg] = await fetcher.fetch(1, wait_s)
    return msg


async def drain(fetcher: StreamConsumer, wait_s: float) -> list[StreamMessage]:
    """Everything fetchable until a fetch waits `wait_s` in vain (acking each)."""
    taken: list[StreamMessage] = []
    while msgs := await fetcher.fetch(10, wait_s):
        for msg in msgs:
            await msg.ack()
        taken += msgs
    return taken


async def test_a_published_result_is_fetched_with_its_subject(nats_side: NatsSide) -> None:
    await nats_side.durable("g")
    fetcher = await nats_side.fetcher("g")
    await nats_side.publisher.publish(subject(nats_side, "j1"), b"r1", msg_id="a1")
    msg = await fetch_one(fetcher)
    assert (msg.subject, msg.data) == (subject(nats_side, "j1"), b"r1")
    await msg.ack()


async def test_headers_are_stored_and_fetched_with_the_message(nats_side: NatsSide) -> None:
    await nats_side.durable("g")
    fetcher = await nats_side.fetcher("g")
    signed = {"Cortensor-Signature": "c2lnbmVk"}
    await nats_side.publisher.publish(subject(nats_side, "j1"), b"r1", msg_id="a1", headers=signed)
    await nats_side.publisher.publish(subject(nats_side, "j2"), b"r2", msg_id="a2")
    first, second = await drain(fetcher, nats_side.ack_wait_s)
    assert first.headers is not None
    assert first.headers["Cortensor-Signature"] == "c2lnbmVk"
    assert "Cortensor-Signature" not in (second.headers or {})


async def test_a_second_publish_with_the_same_id_is_dropped(nats_side: NatsSide) -> None:
    await nats_side.durable("g")
    fetcher = await nats_side.fetcher("g")
    for payload in (b"first", b"retried"):
        await nats_side.publisher.publish(subject(nats_side, "j1"), payload, msg_id="same")
    await nats_side.publisher.publish(subject(nats_side, "j1"), b"other", msg_id="other")
    assert await nats_side.stored(nats_side.topology.results_stream) == 2
    taken = await drain(fetcher, nats_side.ack_wait_s)
    assert [m.data for m in taken] == [b"first", b"other"]


async def test_an_empty_fetch_waits_then_returns_nothing(nats_side: NatsSide) -> None:
    await nats_side.durable("g")
    fetcher = await nats_side.fetcher("g")
    started = time.monotonic()
    assert await fetcher.fetch(5, 0.3) == []
    assert time.monotonic() - started >= 0.25


async def test_a_fetch_takes_what_is_waiting_up_to_its_batch(nats_side: NatsSide) -> None:
    await nats_side.durable("g")
    fetcher = await nats_side.fetcher("g")
    for i in range(5):
        await nats_side.publisher.publish(subject(nats_side, f"j{i}"), b"%d" % i, msg_id=f"m{i}")
    first = await fetcher.fetch(3, 5.0)
    assert 1 <= len(first) <= 3
    for msg in first:
        await msg.ack()
    rest = await drain(fetcher, nats_side.ack_wait_s)
    assert sorted(m.data for m in [*first, *rest]) == [b"%d" % i for i in range(5)]


async def test_an_unacked_result_is_delivered_again_after_the_ack_wait(
    nats_side: NatsSide,
) -> None:
    await nats_side.durable("g")
    fetcher = await nats_side.fetcher("g")
    await nats_side.publisher.publish(subject(nats_side, "j1"), b"r1", msg_id="a1")
    await fetch_one(fetcher)  # a guard that dies before it acks
    started = time.monotonic()
    again = await fetch_one(fetcher, wait_s=nats_side.ack_wait_s * 5)
    assert again.data == b"r1"
    assert time.monotonic() - started >= nats_side.ack_wait_s * 0.5
    await again.ack()
    assert await fetcher.fetch(1, nats_side.ack_wait_s * 2) == []


async def test_a_nak_delivers_again_and_a_delayed_nak_not_before_its_delay(
    nats_side: NatsSide,
) -> None:
    await nats_side.durable("g")
    fetcher = await nats_side.fetcher("g")
    await nats_side.publisher.publish(subject(nats_side, "j1"), b"r1", msg_id="a1")
    await (await fetch_one(fetcher)).nak()
    again = await fetch_one(fetcher, wait_s=nats_side.ack_wait_s / 2)
    assert again.data == b"r1"
    delay = nats_side.ack_wait_s / 2
    started = time.monotonic()
    await again.nak(delay=delay)
    third = await fetch_one(fetcher, wait_s=nats_side.ack_wait_s * 3)
    assert time.monotonic() - started >= delay * 0.8
    assert third.data == b"r1"
    await third.ack()


async def test_a_terminated_result_is_never_delivered_again(nats_side: NatsSide) -> None:
    await nats_side.durable("g")
    fetcher = await nats_side.fetcher("g")
    await nats_side.publisher.publish(subject(nats_side, "j1"), b"junk", msg_id="a1")
    await (await fetch_one(fetcher)).term()
    assert await fetcher.fetch(1, nats_side.ack_wait_s * 2) == []


async def test_in_progress_keeps_a_message_from_being_delivered_again(
    nats_side: NatsSide,
) -> None:
    await nats_side.durable("g")
    holder, other = await nats_side.fetcher("g"), await nats_side.fetcher("g")
    await nats_side.publisher.publish(subject(nats_side, "j1"), b"r1", msg_id="a1")
    held = await fetch_one(holder)
    for _ in range(6):  # twice the ack wait, renewed every third of it
        await asyncio.sleep(nats_side.ack_wait_s / 3)
        await held.in_progress()
        assert await other.fetch(1, 0.01) == []
    await held.ack()
    assert await other.fetch(1, nats_side.ack_wait_s * 2) == []


async def test_the_oldest_untaken_message_is_the_first_not_acked_whoever_holds_it(
    nats_side: NatsSide,
) -> None:
    await nats_side.durable("g")
    fetcher = await nats_side.fetcher("g")
    assert await fetcher.oldest_untaken() is None
    stamps = []
    for i in range(3):
        before = utcnow() - timedelta(seconds=1)  # the server's clock, not ours
        await nats_side.publisher.publish(subject(nats_side, f"j{i}"), b"%d" % i, msg_id=f"m{i}")
        stamps.append((before, utcnow() + timedelta(seconds=1)))
        await asyncio.sleep(0.05)

    def first_stored(oldest: object, i: int) -> bool:
        return oldest is not None and stamps[i][0] <= oldest <= stamps[i][1]  # type: ignore[operator]

    never_fetched = await fetcher.oldest_untaken()
    assert first_stored(never_fetched, 0)
    held = await fetcher.fetch(3, 5.0)  # in a guard's hands, unacked: still untaken
    assert [m.data for m in held] == [b"0", b"1", b"2"]
    assert await fetcher.oldest_untaken() == never_fetched
    await held[2].ack()  # acked out of order: the oldest untaken stays the first
    await held[0].ack()

    async def moved() -> object:
        oldest = await fetcher.oldest_untaken()
        return oldest if oldest != never_fetched else None

    assert first_stored(await eventually(moved, what="the first taken", interval=0.05), 1)
    await held[1].term()

    async def none_left() -> bool:
        return await fetcher.oldest_untaken() is None

    assert await eventually(none_left, what="every message taken", interval=0.05)


async def test_fetchers_on_one_durable_share_its_messages(nats_side: NatsSide) -> None:
    await nats_side.durable("g")
    a, b = await nats_side.fetcher("g"), await nats_side.fetcher("g")
    for i in range(6):
        await nats_side.publisher.publish(subject(nats_side, f"j{i}"), b"%d" % i, msg_id=f"m{i}")
    taken_a = await a.fetch(2, 5.0)
    taken_b = await drain(b, nats_side.ack_wait_s / 4)
    for msg in taken_a:
        await msg.ack()
    assert not {m.data for m in taken_a} & {m.data for m in taken_b}
    assert sorted(m.data for m in [*taken_a, *taken_b]) == [b"%d" % i for i in range(6)]


async def test_no_more_than_max_ack_pending_are_out_unacked(nats_side: NatsSide) -> None:
    await nats_side.durable("g", max_ack_pending=2)
    fetcher = await nats_side.fetcher("g")
    for i in range(3):
        await nats_side.publisher.publish(subject(nats_side, f"j{i}"), b"%d" % i, msg_id=f"m{i}")
    out = await fetcher.fetch(1, 5.0)
    out += await fetcher.fetch(1, 5.0)
    assert await fetcher.fetch(1, nats_side.ack_wait_s / 4) == []
    await out[0].ack()
    [third] = await fetcher.fetch(1, 5.0)
    assert sorted(m.data for m in [*out, third]) == [b"0", b"1", b"2"]


async def test_signals_reach_current_subscribers_by_wildcard_until_unsubscribed(
    nats_side: NatsSide,
) -> None:
    listener, speaker = await nats_side.signals(), await nats_side.signals()
    heard: list[tuple[str, bytes]] = []

    async def hear(msg: Signal) -> None:
        heard.append((msg.subject, msg.data))

    topology = nats_side.topology
    sub = await listener.subscribe(topology.heartbeat_subject("*"), hear)
    await speaker.publish(topology.heartbeat_subject("n1"), b"beat 1")
    await speaker.publish(topology.results_subject("not-a-heartbeat", node_id="n1"), b"other")
    await eventually(lambda: heard, what="a heartbeat heard")
    assert heard == [(topology.heartbeat_subject("n1"), b"beat 1")]
    await sub.unsubscribe()
    await speaker.publish(topology.heartbeat_subject("n1"), b"beat 2")
    with_marker = await nats_side.signals()
    marker: list[bytes] = []

    async def mark(msg: Signal) -> None:
        marker.append(msg.data)

    await with_marker.subscribe(topology.heartbeat_subject("*"), mark)
    await speaker.publish(topology.heartbeat_subject("n1"), b"beat 3")
    await eventually(lambda: marker, what="the marker heard")
    assert heard == [(topology.heartbeat_subject("n1"), b"beat 1")]


async def test_signals_carry_their_headers(nats_side: NatsSide) -> None:
    listener, speaker = await nats_side.signals(), await nats_side.signals()
    heard: list[Signal] = []

    async def hear(msg: Signal) -> None:
        heard.append(msg)

    subject = nats_side.topology.heartbeat_subject("n1")
    await listener.subscribe(subject, hear)
    await speaker.publish(subject, b"signed", headers={"Cortensor-Signature": "c2lnbmVk"})
    await speaker.publish(subject, b"bare")
    await eventually(
        lambda: {b"signed", b"bare"} <= {m.data for m in heard}, what="both heartbeats heard"
    )
    [signed] = [m for m in heard if m.data == b"signed"]
    [bare] = [m for m in heard if m.data == b"bare"]
    assert (signed.data, dict(signed.headers or {})) == (
        b"signed",
        {"Cortensor-Signature": "c2lnbmVk"},
    )
    assert (bare.data, bare.headers or {}) == (b"bare", {})
