"""The SDK rides through outages: jobs submitted while RabbitMQ bounces are all sent once
it is back, none raised to the caller; a verdict published while the client's NATS
connection was down is still returned by `wait`.

RabbitMQ here is a private node (tests/chaos/servers.py) that the test stops and starts
again; the shared servers are never touched. NATS is the shared server, reached through
a proxy of the test's own that can cut the client's connection while the server stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from aio_pika.abc import ExchangeType
from nats.js.errors import NotFoundError

import cortensor.client
from cortensor.adapters import jetstream
from cortensor.adapters.topology import Topology
from cortensor.client import BUSY_HOLD_S, Client
from cortensor.errors import BadSetting, Busy
from cortensor.schemas import JobRequest, Verdict
from cortensor.settings import Settings
from tests.chaos.servers import RabbitServer
from tests.conftest import eventually, make_settings
from tests.integration.tls_servers import free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.nats]

JOBS = 240
SUBMITTERS = 12
DOWN_S = 4.0


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitServer, str]]:
    """A private RabbitMQ node and the URL of a user of its own on it."""
    server = RabbitServer(tmp_path_factory.mktemp("rabbit"))
    server.start()
    try:
        password = uuid.uuid4().hex
        for args in (
            ("add_user", "sdk", password),
            ("set_permissions", "-p", "/", "sdk", ".*", ".*", ".*"),
        ):
            done = server.ctl(*args)
            assert done.returncode == 0, done.stderr
        yield server, f"amqp://sdk:{password}@127.0.0.1:{server.port}/"
    finally:
        server.stop()


async def _streams(settings: Settings) -> None:
    nc = await jetstream.connect_as(settings, name="test-sdk-setup")
    try:
        await jetstream.apply_streams(nc.jetstream(), Topology(settings.namespace))
    finally:
        await nc.drain()


async def _drop_streams(settings: Settings) -> None:
    nc = await jetstream.connect_as(settings, name="test-sdk-teardown")
    try:
        for stream in Topology(settings.namespace).streams:
            with contextlib.suppress(NotFoundError):
                await nc.jetstream().delete_stream(stream.name)
    finally:
        await nc.drain()


@pytest.fixture
async def namespace() -> AsyncIterator[Settings]:
    """A namespace of this test with its streams on the shared NATS."""
    settings = make_settings()
    await _streams(settings)
    yield settings
    await _drop_streams(settings)


async def _router_queue(url: str, topology: Topology) -> None:
    """The jobs exchange and a queue in the router's place, on the private node."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        jobs = await channel.declare_exchange(
            topology.jobs_exchange, ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            topology.router_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(jobs, routing_key=topology.jobs_binding)


async def _queued(url: str, topology: Topology) -> list[tuple[str, bytes]]:
    """Every message in the router's queue: (message id, body)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.router_queue)
        found = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            found.append((message.message_id or "", message.body))
        return found


async def _publish_verdicts(settings: Settings, verdicts: list[Verdict]) -> None:
    """Publish verdicts as a guard would (the session is the operator's)."""
    topology = Topology(settings.namespace)
    nc = await jetstream.connect_as(settings, name="test-sdk-guard")
    try:
        js = nc.jetstream()
        for v in verdicts:
            await jetstream.publish(
                js, topology.verdict_subject(v), v.model_dump_json().encode(), msg_id=str(v.job_id)
            )
    finally:
        await nc.drain()


@dataclass
class Submitted:
    """When each submit began and ended, and what it raised."""

    spans: list[tuple[float, float]] = field(default_factory=list)
    raised: list[BaseException] = field(default_factory=list)
    ids: list[uuid.UUID] = field(default_factory=list)


def _bounce(server: RabbitServer) -> tuple[float, float]:
    """Take the broker away for DOWN_S (its application stopped: every connection
    closed, the port shut) and start it again; returns the span it was surely down."""
    assert server.ctl("stop_app").returncode == 0
    down = time.monotonic()
    time.sleep(DOWN_S)
    back = time.monotonic()
    assert server.ctl("start_app").returncode == 0
    return down, back


async def test_jobs_submitted_while_rabbitmq_bounces_are_all_sent_then_answered(
    rabbit: tuple[RabbitServer, str], namespace: Settings
) -> None:
    server, url = rabbit
    settings = namespace.model_copy(update={"amqp_url": url})
    topology = Topology(settings.namespace)
    await _router_queue(url, topology)
    jobs = [JobRequest(inputs=[f"text {i}"], deadline_s=120) for i in range(JOBS)]
    submitted = Submitted()

    async with Client(settings) as client:

        async def submitter(share: list[JobRequest]) -> None:
            for job in share:
                began = time.monotonic()
                try:
                    submitted.ids.append(await client.submit(job))
                except Exception as exc:
                    submitted.raised.append(exc)
                submitted.spans.append((began, time.monotonic()))
                await asyncio.sleep(0.1)

        sending = asyncio.gather(*(submitter(jobs[i::SUBMITTERS]) for i in range(SUBMITTERS)))
        await eventually(lambda: len(submitted.spans) >= JOBS // 8, what="the first jobs sent")
        down, back = await asyncio.to_thread(_bounce, server)
        await sending

        assert submitted.raised == []
        assert sorted(submitted.ids) == sorted(j.job_id for j in jobs)
        # Jobs were in flight while the broker was surely away, and waited for it.
        assert any(began < back and ended > back for began, ended in submitted.spans)
        assert all(ended > back for began, ended in submitted.spans if down < began < back)

        queued = await _queued(url, topology)
        # Every job is in the router's queue; a job whose confirm was lost in the bounce
        # may be there twice, with its job id as message id, for the router to drop.
        assert {message_id for message_id, _ in queued} == {str(j.job_id) for j in jobs}
        assert all(JobRequest.model_validate_json(body) for _, body in queued)

        # The RabbitMQ side then the NATS side: the client waits for the verdicts of the
        # jobs it submitted through the bounce.
        verdicts = [
            Verdict(job_id=j.job_id, owner=client.owner, status="verified", reason="test")
            for j in jobs
        ]
        waiting = asyncio.gather(*(client.wait(j.job_id, timeout_s=60) for j in jobs))
        await _publish_verdicts(settings, verdicts)
        assert {v.job_id for v in await waiting} == {j.job_id for j in jobs}


async def test_a_full_queue_and_a_refused_publish_are_raised_at_once(
    rabbit: tuple[RabbitServer, str], namespace: Settings
) -> None:
    server, url = rabbit
    settings = namespace.model_copy(update={"amqp_url": url})
    topology = Topology(settings.namespace)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        jobs = await channel.declare_exchange(
            topology.jobs_exchange, ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            topology.router_queue,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish"},
        )
        await queue.bind(jobs, routing_key=topology.jobs_binding)
        async with Client(settings) as client:
            # A quorum queue refuses once it is past its bound (it may take one more
            # first, as its length is known a little late). Each refusal is raised
            # rather than published again until the deadline: the broker said no.
            refused: list[Busy] = []
            for i in range(5):
                try:
                    await client.submit(JobRequest(inputs=[f"job {i}"]), timeout_s=600)
                except Busy as exc:
                    refused.append(exc)
            assert refused
            assert "the network is busy" in str(refused[0])
            await queue.purge()
            # Told busy, the client holds back a moment before it sends again.
            with pytest.raises(Busy, match="refused a job moments ago"):
                await client.submit(JobRequest(inputs=["too soon"]))
            await asyncio.sleep(BUSY_HOLD_S)
            await client.submit(JobRequest(inputs=["room again"]))
        assert await queue.get(no_ack=True, fail=False) is not None

    password = uuid.uuid4().hex
    for args in (
        ("add_user", "reader", password),
        ("set_permissions", "-p", "/", "reader", ".*", "^$", ".*"),
    ):
        assert server.ctl(*args).returncode == 0
    reader = settings.model_copy(
        update={"amqp_url": f"amqp://reader:{password}@127.0.0.1:{server.port}/"}
    )
    async with Client(reader) as client:
        with pytest.raises(BadSetting, match="RabbitMQ refused to let"):
            await client.submit(JobRequest(inputs=["not allowed"]), timeout_s=600)


class Proxy:
    """A TCP proxy to a server that can cut every connection through it and refuse new
    ones for a while, as a network outage between a client and a live server would."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._pipes |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        """Close every connection and stop listening."""
        assert self._server is not None
        self._server.close()
        for w in list(self._pipes):
            w.close()
        self._pipes.clear()
        await self._server.wait_closed()


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    login = parts.netloc.rpartition("@")[0]
    where = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{login}@{where}" if login else where))


@pytest.fixture
async def shared_exchange(namespace: Settings) -> AsyncIterator[Settings]:
    """The namespace's jobs exchange on the shared RabbitMQ, which a client opens."""
    topology = Topology(namespace.namespace)
    connection = await aio_pika.connect(namespace.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(topology.jobs_exchange, ExchangeType.TOPIC, durable=True)
        yield namespace
        await channel.exchange_delete(topology.jobs_exchange)


async def test_a_verdict_published_while_nats_was_away_is_still_returned(
    shared_exchange: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = shared_exchange
    # No backstop read: only the read after the reconnect can find the verdict.
    monkeypatch.setattr(cortensor.client, "REREAD_S", 3600.0)
    target = urlsplit(namespace.nats_url)
    proxy = Proxy(target.hostname or "127.0.0.1", target.port or 4222)
    await proxy.open()
    client_settings = namespace.model_copy(
        update={"nats_url": _through(namespace.nats_url, proxy.port)}
    )
    async with Client(client_settings) as client:
        job_id = uuid.uuid4()
        waiting = asyncio.create_task(client.wait(job_id, timeout_s=3600))
        await eventually(lambda: client.nc.stats["out_msgs"] > 0, what="the client listens")
        await asyncio.sleep(0.2)  # the direct get of `wait` answered: no verdict yet
        await proxy.cut()
        await eventually(lambda: not client.nc.is_connected, what="the client disconnected")
        verdict = Verdict(job_id=job_id, owner=client.owner, status="verified", reason="late")
        await _publish_verdicts(namespace, [verdict])  # heard by nobody: it is away
        assert not waiting.done()
        await proxy.open()
        # The bound only keeps a failing test from waiting for an hour.
        got = await asyncio.wait_for(waiting, 120)
        assert got.job_id == job_id
        assert got.reason == "late"
        assert client.nc.stats["reconnects"] >= 1
    await proxy.cut()


async def test_one_subscription_hands_each_awaited_verdict_to_its_waiters(
    shared_exchange: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = shared_exchange
    # No backstop read: only what the shared subscription hears counts.
    monkeypatch.setattr(cortensor.client, "REREAD_S", 3600.0)
    async with Client(namespace) as client:
        first, second, unawaited = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        waits = [
            asyncio.create_task(client.wait(job_id, timeout_s=60))
            for job_id in (first, first, second)
        ]
        await eventually(lambda: len(client._awaited) == 2, what="the client listens")
        await asyncio.sleep(0.2)  # the direct gets of `wait` answered: no verdict yet
        await _publish_verdicts(
            namespace,
            [
                Verdict(job_id=job_id, owner=client.owner, status="verified", reason=str(job_id))
                for job_id in (unawaited, second, first)
            ],
        )
        got = await asyncio.wait_for(asyncio.gather(*waits), 30)
        assert [v.job_id for v in got] == [first, first, second]
        assert all(v.reason == str(v.job_id) for v in got)
        assert client._awaited == {}, "every wait ended leaves nothing behind"
