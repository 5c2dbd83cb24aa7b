"""The pure parts of the in-memory twins: NATS subject and RabbitMQ topic matching, and
the twin broker's bookkeeping that the contract suite cannot see from outside (double
settlement, a queue's delivery limit counted per message, a closed channel's messages
going back, a dead letter's routing key)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.adapters.interfaces import Delivery, Unroutable
from cortensor.adapters.memory import MemoryBroker, MemoryNats, NoStream, subject_matches
from cortensor.adapters.memory.queues import AlreadySettled, topic_matches
from cortensor.adapters.topology import Topology

tokens = st.lists(st.text("abc-_0123456789", min_size=1, max_size=4), min_size=1, max_size=5)


@given(tokens)
def test_a_subject_matches_itself_and_not_one_token_more_or_less(subject: list[str]) -> None:
    s = ".".join(subject)
    assert subject_matches(s, s)
    assert not subject_matches(s, s + ".x")
    if len(subject) > 1:
        assert not subject_matches(s, ".".join(subject[:-1]))


@given(tokens, st.data())
def test_a_star_matches_any_one_token(subject: list[str], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(subject) - 1))
    pattern = [*subject[:i], "*", *subject[i + 1 :]]
    assert subject_matches(".".join(pattern), ".".join(subject))
    other = [*subject[:i], subject[i] + "z", *subject[i + 1 :]]
    assert subject_matches(".".join(pattern), ".".join(other))
    if i + 1 < len(subject):
        changed = [*subject[: i + 1], subject[i + 1] + "z", *subject[i + 2 :]]
        assert not subject_matches(".".join(pattern), ".".join(changed))


@given(tokens, st.data())
def test_a_tail_wildcard_matches_one_or_more_tokens(
    subject: list[str], data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(subject) - 1))
    pattern = ".".join([*subject[:i], ">"])
    assert subject_matches(pattern, ".".join(subject))
    if i > 0:  # `>` needs at least one token after the prefix
        assert not subject_matches(pattern, ".".join(subject[:i]))


def test_heartbeat_and_result_subjects_of_the_topology() -> None:
    topology = Topology("ns")
    assert subject_matches(topology.heartbeat_subject("*"), topology.heartbeat_subject("n-1"))
    assert not subject_matches(
        topology.heartbeat_subject("*"), topology.results_subject("j", node_id="n-1")
    )
    [results] = [s for s in topology.streams if s.role == "results"]
    assert all(
        subject_matches(p, topology.results_subject("j1", node_id="n-1")) for p in results.subjects
    )


words = st.lists(st.text("abc-_0123456789", min_size=1, max_size=4), max_size=5)


@given(words, st.data())
def test_a_topic_key_matches_itself_and_a_star_for_any_one_word(
    key: list[str], data: st.DataObject
) -> None:
    k = ".".join(key)
    assert topic_matches(k, k)
    assert topic_matches("#", k)
    assert not topic_matches(k + ".x", k)
    if key:
        i = data.draw(st.integers(0, len(key) - 1))
        assert topic_matches(".".join([*key[:i], "*", *key[i + 1 :]]), k)
        assert not topic_matches(".".join(["*", *key]), k)


@given(words, st.data())
def test_a_hash_matches_any_run_of_words_none_included(key: list[str], data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(key)))
    end = data.draw(st.integers(start, len(key)))
    assert topic_matches(".".join([*key[:start], "#", *key[end:]]), ".".join(key))


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("job.*", "job.alice", True),
        ("job.*", "job.", True),  # an empty word is a word
        ("job.*", "job", False),
        ("job.*", "job.a.b", False),
        ("*", "", False),  # an empty key has no words
        ("#", "", True),
        ("job.#", "job", True),
        ("#.alice", "x.job.alice", True),
        ("*.b.#", "job.a.b", False),
    ],
)
def test_topic_matching_at_its_edges(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


async def test_a_dead_letter_keeps_its_routing_key() -> None:
    topology = Topology("ns")
    broker = MemoryBroker(topology)
    channel = broker.channel()
    got: asyncio.Queue[Delivery] = asyncio.Queue()

    async def take(delivery: Delivery) -> None:
        got.put_nowait(delivery)

    channel.consume(topology.router_queue, take)
    broker.publish(topology.jobs_exchange, "job.alice", b"x", message_id="1")
    delivery = await asyncio.wait_for(got.get(), 1)
    assert delivery.routing_key == "job.alice"
    await delivery.nack(requeue=False)
    dead = broker.get(topology.dead_letter_queue)
    assert dead is not None
    assert dead.routing_key == "job.alice"


async def test_a_delivery_settles_once() -> None:
    topology = Topology("ns")
    broker = MemoryBroker(topology)
    channel = broker.channel(prefetch=1)
    got: asyncio.Queue[Delivery] = asyncio.Queue()

    async def take(delivery: Delivery) -> None:
        got.put_nowait(delivery)

    channel.consume(topology.router_queue, take)
    broker.publish(
        topology.jobs_exchange, topology.jobs_routing_key("client-1"), b"x", message_id="1"
    )
    delivery = await asyncio.wait_for(got.get(), 1)
    await delivery.ack()
    with pytest.raises(AlreadySettled):
        await delivery.nack(requeue=True)


async def test_a_closed_channel_returns_its_messages_and_counts_them_returned() -> None:
    topology = Topology("ns")
    broker = MemoryBroker(topology)
    channel = broker.channel()
    got: asyncio.Queue[Delivery] = asyncio.Queue()

    async def take(delivery: Delivery) -> None:
        got.put_nowait(delivery)

    channel.consume(topology.router_queue, take)
    broker.publish(
        topology.jobs_exchange, topology.jobs_routing_key("client-1"), b"x", message_id="1"
    )
    await asyncio.wait_for(got.get(), 1)
    channel.close()
    assert broker.depth(topology.router_queue) == 1
    [message] = broker.queue(topology.router_queue).ready
    assert (message.delivered, message.returned) == (1, 1)


def test_publishing_nowhere_raises() -> None:
    topology = Topology("ns")
    broker = MemoryBroker(topology)
    with pytest.raises(Unroutable):
        broker.publish(topology.hw_exchange("cpu-int8"), "nobody", b"", mandatory=True)
    broker.publish(topology.hw_exchange("cpu-int8"), "nobody", b"")  # not mandatory: dropped
    with pytest.raises(LookupError):
        broker.publish("no-such-exchange", "", b"")


async def test_a_jetstream_publish_that_no_stream_takes_raises() -> None:
    nats = MemoryNats(Topology("ns"))
    with pytest.raises(NoStream):
        await nats.publish("elsewhere.subject", b"", msg_id="1")
