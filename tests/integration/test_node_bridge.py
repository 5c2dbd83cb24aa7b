"""The node's NATS bridge (a loop on a thread for Celery's threads) on the real JetStream.

The bridge's methods block their caller, as Celery task threads expect; the tests call
them through `asyncio.to_thread` so that their own subscribers keep receiving.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from conftest import make_settings
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from cortensor.node.bridge import NatsBridge
from cortensor.settings import Settings
from cortensor.topology import Topology
from cortensor.transport import jetstream

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
async def settings() -> AsyncIterator[Settings]:
    """A namespace of this module's own with its JetStream streams (RabbitMQ not needed)."""
    settings = make_settings()
    topology = Topology(settings.namespace)
    nc = await jetstream.connect(settings.nats_url, name="test-bridge-setup")
    await jetstream.apply_streams(nc.jetstream(), topology)
    yield settings
    js = nc.jetstream()
    for stream in topology.streams:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(stream.name)
    await nc.drain()


@pytest.fixture(scope="module")
def topology(settings: Settings) -> Topology:
    return Topology(settings.namespace)


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    client = await jetstream.connect(settings.nats_url, name="test-bridge-observer")
    yield client
    await client.drain()


def release(bridge: NatsBridge) -> None:
    """Close the bridge, and the event loop it leaves open.

    NatsBridge.close() stops its loop but does not close it (the loop, and its self-pipe
    sockets, leak: a ResourceWarning when collected, an error under this suite's
    warning filter). test_close_releases_the_event_loop reports that once; here the
    loop is closed so that the leak is not blamed on whichever test the garbage
    collector happens to run in.
    """
    bridge.close()
    loop = bridge._loop
    if not loop.is_running() and not loop.is_closed():
        loop.close()


@pytest.fixture
def bridge(settings: Settings) -> Iterator[NatsBridge]:
    bridge = NatsBridge(settings.nats_url, name=f"test-node-{uuid.uuid4().hex[:6]}")
    bridge.start()
    yield bridge
    release(bridge)


def nats_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "nats"}


async def test_publish_durably_stores_a_result_once(
    bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    subject = topology.results_subject(str(uuid.uuid4()))
    msg_id = f"result-{uuid.uuid4()}"

    # A retried task publishes the same result again under the same id.
    for _ in range(2):
        await asyncio.to_thread(
            bridge.publish_durably, subject, b'{"result": 1}', msg_id=msg_id, within=5
        )

    js = nc.jetstream()
    info = await js.stream_info(topology.results_stream, subjects_filter=subject)
    assert info.state.subjects == {subject: 1}
    stored = await js.get_last_msg(topology.results_stream, subject)
    assert stored.data == b'{"result": 1}'
    assert stored.headers is not None
    assert stored.headers[jetstream.MSG_ID_HEADER] == msg_id


async def test_heartbeats_go_out_at_their_interval_until_the_last_words(
    bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    node = f"node-{uuid.uuid4().hex[:6]}"
    subject = topology.heartbeat_subject(node)
    received: list[bytes] = []
    counter = iter(range(1_000_000))
    three, last_words = asyncio.Event(), asyncio.Event()

    async def collect(msg: Msg) -> None:
        received.append(msg.data)
        if len(received) >= 3:
            three.set()
        if msg.data == b"draining":
            last_words.set()

    sub = await nc.subscribe(subject, cb=collect)
    await nc.flush()
    await asyncio.to_thread(
        bridge.start_heartbeats, subject, lambda: b"beat %d" % next(counter), 0.05
    )

    async with asyncio.timeout(1):
        await three.wait()
    await asyncio.to_thread(bridge.stop_heartbeats, (subject, b"draining"))
    async with asyncio.timeout(1):
        await last_words.wait()
    stopped_at = len(received)
    await asyncio.sleep(0.2)
    await sub.unsubscribe()

    beats = received[:-1]
    assert beats == [b"beat %d" % i for i in range(len(beats))], "in order, none lost"
    assert len(beats) >= 3
    assert received[-1] == b"draining"
    assert len(received) == stopped_at, "no heartbeat after the last words"


async def test_a_failing_heartbeat_does_not_end_the_heartbeats(
    bridge: NatsBridge, nc: NATS, topology: Topology
) -> None:
    subject = topology.heartbeat_subject(f"node-{uuid.uuid4().hex[:6]}")
    calls = iter(range(1_000_000))

    def make() -> bytes:
        n = next(calls)
        if n == 1:
            raise RuntimeError("the node could not describe itself this time")
        return b"beat %d" % n

    sub = await nc.subscribe(subject)
    await nc.flush()
    await asyncio.to_thread(bridge.start_heartbeats, subject, make, 0.02)

    got = [(await sub.next_msg(timeout=1)).data for _ in range(3)]
    await asyncio.to_thread(bridge.stop_heartbeats)
    await sub.unsubscribe()

    assert got == [b"beat 0", b"beat 2", b"beat 3"]


def test_close_ends_the_thread_and_the_connection(settings: Settings) -> None:
    before = nats_threads()
    bridge = NatsBridge(settings.nats_url, name="test-node-close")
    bridge.start()
    [thread] = nats_threads() - before
    assert thread.is_alive()
    assert bridge.nc.is_connected

    bridge.stop_heartbeats()  # without heartbeats started, it is a no-op
    bridge.close()

    assert not thread.is_alive()
    assert bridge.nc.is_closed
    bridge.close()  # a second close is harmless
    bridge.stop_heartbeats(("x", b"too late"))  # and so is stopping after close
    release(bridge)


def test_close_releases_the_event_loop(settings: Settings) -> None:
    bridge = NatsBridge(settings.nats_url, name="test-node-leak")
    bridge.start()

    bridge.close()

    loop = bridge._loop
    closed = loop.is_closed()
    if not closed:
        loop.close()  # so that the leak surfaces here, not as a warning in a later test
    assert closed, (
        "NatsBridge.close() must close its event loop after the thread ends, or the loop"
        " and its self-pipe sockets leak (ResourceWarning 'unclosed event loop')"
    )


def test_a_bridge_that_was_never_started_says_so(settings: Settings) -> None:
    bridge = NatsBridge(settings.nats_url, name="test-node-unstarted")

    with pytest.raises(RuntimeError, match=r"start\(\) was not called"):
        _ = bridge.nc
    bridge.close()  # closing what never started is harmless
    release(bridge)
