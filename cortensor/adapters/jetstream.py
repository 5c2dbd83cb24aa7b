"""NATS and JetStream over nats-py: streams, the guard consumer, deduplicated publishing."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from cortensor.adapters.interfaces import SignalHandler, StreamMessage
from cortensor.adapters.topology import Topology
from cortensor.settings import Settings, login_refused, split_urls
from cortensor.tls import client_context

MSG_ID_HEADER = "Nats-Msg-Id"

ErrorCallback = Callable[[Exception], Awaitable[None]]
"""Told of an error the server reports on a live connection (a permissions violation)."""
Callback = Callable[[], Awaitable[None]]
"""Told that the connection was lost, or made again."""


async def connect(
    url: str,
    *,
    name: str,
    inbox_prefix: str = "_INBOX",
    ssl_context: ssl.SSLContext | None = None,
    error_cb: ErrorCallback | None = None,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
) -> NATS:
    """A NATS connection that keeps reconnecting; replies come to `inbox_prefix`;
    `error_cb` hears the errors the server reports (nats-py's default logs them),
    `disconnected_cb` and `reconnected_cb` when the connection is lost and made again."""
    servers = split_urls(url)  # a cluster's servers (comma-separated): nats-py fails over
    login = urlsplit(servers[0])
    return await nats.connect(
        servers,
        # The login of the URLs, also for the servers a cluster announces (nats-py adds
        # them to its list without one, and would be refused there after a failover).
        user=login.username,
        password=login.password,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        inbox_prefix=inbox_prefix,
        tls=ssl_context,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
    )


async def connect_as(
    settings: Settings,
    *,
    name: str,
    error_cb: ErrorCallback | None = None,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
) -> NATS:
    """The connection of the principal `settings` describes (URL, inbox, TLS files);
    BadSetting when the server refuses its login, rather than retrying for ever."""
    await check_login(settings)
    return await connect(
        settings.nats_url,
        name=name,
        inbox_prefix=settings.nats_inbox_prefix,
        ssl_context=client_context(settings),
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
    )


async def _quiet(_: Exception) -> None:
    """The one error a login check waits for is raised by connect itself."""


LOGIN_TRIES = 3
"""Refusals in a row that mean a login is refused: while the server reloads its users
(`cortensor credentials`), a login that arrives may be refused once."""


async def check_login(settings: Settings) -> None:
    """Raise BadSetting when the NATS server refuses the principal's login. A server
    that cannot be reached is not an answer: the connection that follows waits for it."""
    for attempt in range(1, LOGIN_TRIES + 1):
        nc = NATS()
        try:
            await nc.connect(
                settings.nats_urls,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                tls=client_context(settings),
                error_cb=_quiet,
                connect_timeout=5,  # a busy server may take seconds to greet
            )
            return
        except (OSError, NatsError) as exc:
            if "authorization violation" not in str(exc).lower():
                return
            if attempt == LOGIN_TRIES:
                raise login_refused("NATS", settings.nats_url, settings.credentials) from exc
        finally:
            await nc.close()
        await asyncio.sleep(0.2 * attempt)


async def apply_streams(
    js: JetStreamContext,
    topology: Topology,
    *,
    retention_s: float | None = None,
    replicas: int = 1,
) -> list[str]:
    """Create or update the streams and the guard's durable consumer (idempotent).

    `retention_s` (Settings.retention_h in seconds) is how long the streams that hold
    user content keep a message; without it, their max_age_s from the topology file.
    `replicas` (Settings.stream_replicas): servers that store each stream and the
    consumer, 3 on a 3-server cluster (a stream's replicas can be changed in place).
    """
    declared = []
    for spec in topology.streams:
        max_age_s = retention_s if spec.holds_content and retention_s else spec.max_age_s
        config = StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            storage=StorageType(spec.storage),
            max_age=max_age_s,
            duplicate_window=spec.duplicate_window_s,
            num_replicas=replicas,
            allow_direct=spec.allow_direct,
            max_bytes=spec.max_bytes,
            max_msgs=spec.max_msgs,
            discard=DiscardPolicy(spec.discard),
        )
        try:
            await js.stream_info(spec.name)
            await js.update_stream(config)
        except NotFoundError:
            await js.add_stream(config)
        declared.append(
            f"stream {spec.name} {list(spec.subjects)} ({spec.storage}, max age {max_age_s:g} s,"
            f" max bytes {spec.max_bytes}, max messages {spec.max_msgs}, discard {spec.discard})"
        )
    consumer = topology.guard_consumer
    await js.add_consumer(
        consumer.stream,
        ConsumerConfig(
            durable_name=consumer.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=consumer.ack_wait_s,
            max_ack_pending=consumer.max_ack_pending,
            num_replicas=replicas,
        ),
    )
    declared.append(f"consumer {consumer.durable} on {consumer.stream}")
    return declared


async def publish(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Publish and wait for the stream's ack; the msg id makes a retried publish a no-op.
    `headers` (a signature) are stored with the message."""
    await js.publish(subject, payload, headers={**(headers or {}), MSG_ID_HEADER: msg_id})


class JetStreamPublisher:
    """Deduplicated, acknowledged publishing to the streams: a `StreamPublisher`."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Publish and wait for the stream's ack."""
        await publish(self.js, subject, payload, msg_id=msg_id, headers=headers)


class ResultsBacklog:
    """What a durable consumer has not taken yet, read from the server (the consumer's
    ack floor, and the stored time of the first message past it): a `ResultsBacklog`.
    Two requests: the consumer's info, and one message when some are untaken."""

    def __init__(self, js: JetStreamContext, *, stream: str, durable: str) -> None:
        self.js, self.stream, self.durable = js, stream, durable

    async def oldest_untaken(self) -> datetime | None:
        """When the first message past the consumer's ack floor was stored; None when
        none is pending nor out unacked. Messages past the floor may have been acked
        one by one: the floor's is the time of the oldest that may not have been, never
        later than it."""
        info = await self.js.consumer_info(self.stream, self.durable)
        if not (info.num_pending or info.num_ack_pending):
            return None
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        try:
            # The first message at or past the floor's next (one removed meanwhile, by
            # its age or a purge, is skipped).
            msg = await self.js.get_msg(self.stream, seq=floor + 1, subject=">", next=True)
        except NotFoundError:
            return None
        return msg.time


class PullConsumer:
    """A fetcher on a durable pull consumer (the guards'): a `StreamConsumer`."""

    def __init__(self, psub: JetStreamContext.PullSubscription, backlog: ResultsBacklog) -> None:
        self.psub, self.backlog = psub, backlog

    @classmethod
    async def bind(cls, js: JetStreamContext, *, stream: str, durable: str) -> PullConsumer:
        """Fetch from an existing durable consumer of `stream`."""
        psub = await js.pull_subscribe_bind(durable=durable, stream=stream)
        return cls(psub, ResultsBacklog(js, stream=stream, durable=durable))

    async def oldest_untaken(self) -> datetime | None:
        """When the oldest message that no fetcher has taken was stored (see
        `ResultsBacklog`)."""
        return await self.backlog.oldest_untaken()

    async def fetch(self, batch: int, wait_s: float) -> list[StreamMessage]:
        """Long-poll for one message, then take what is already pending without waiting:
        a fetch of many on an idle consumer would wait for the whole batch."""
        try:
            msgs = await self.psub.fetch(1, timeout=wait_s)
        except NatsTimeout:
            return []
        pending = msgs[-1].metadata.num_pending or 0
        if pending and batch > 1:
            with contextlib.suppress(NatsTimeout):
                msgs += await self.psub.fetch(min(pending, batch - 1), timeout=wait_s)
        return list(msgs)

    async def close(self) -> None:
        """Stop fetching; what is unacked is delivered again after its ack wait."""
        await self.psub.unsubscribe()


class NatsSignals:
    """Core NATS publish/subscribe on a connection: a `SignalBus`."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc

    async def publish(
        self, subject: str, payload: bytes, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send to current subscribers."""
        await self.nc.publish(subject, payload, headers=dict(headers) if headers else None)

    async def subscribe(self, subject: str, handler: SignalHandler) -> Subscription:
        """Call `handler` for each message on `subject` until unsubscribed; live on the
        server when this returns."""
        sub = await self.nc.subscribe(subject, cb=handler)
        await self.nc.flush()
        return sub
