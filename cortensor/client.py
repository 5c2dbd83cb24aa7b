"""The async SDK: publish jobs to the network and wait for their verdicts.

async with Client(Settings()) as client:
    verdict = await client.run(JobRequest(inputs=["hello"]), timeout=30)

A client publishes as its principal (the `principal` of its credentials; `anonymous`
without one): its jobs go out with the routing key `job.<owner>`, and it reads only the
verdict subjects of that owner, which is all its permissions let it read. A gateway,
whose login may publish and read for every owner, names the owner of each call
(`owner=`); the servers refuse any other login that tries.

It rides through outages of the servers (docs/design.md, "The SDK through outages"): a
job is published again until the broker confirms it or its deadline passes (the router
drops a second copy by the job's id), and a client that waits for a verdict reads the
verdicts stream again once NATS is back, so that a verdict published while it was
disconnected is not missed. A server it cannot reach at start is named within
`Settings.connect_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Self, TypeVar
from uuid import UUID

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_random_exponential

from cortensor.adapters import amqp, jetstream, reach
from cortensor.adapters.topology import Topology
from cortensor.errors import (
    BadInput,
    BadSetting,
    BrokerUnavailable,
    Busy,
    CortensorError,
    RetryableError,
    SetupIncomplete,
)
from cortensor.schemas import ANONYMOUS, DEFAULT_DEADLINE_S, JobReceipt, JobRequest, Verdict, utcnow
from cortensor.settings import Settings

T = TypeVar("T")

REREAD_S = 30.0
"""A waiter reads the stream again this often even without a reconnect: a backstop for
a message the server dropped (a slow consumer)."""
RETRY_MAX_S = 1.0
"""Longest pause between two publishes of a job, or two connection attempts."""
BUSY_HOLD_S = 0.25
"""After the network refused a job as busy, how long this client refuses its next jobs
itself (Busy, nothing sent) rather than add a flood of publishes to a full queue: every
refused publish still costs RabbitMQ a write to the quorum queue's log, and confirms
that come later than the jobs' deadlines would end them as BrokerUnavailable instead."""

_GONE = (AMQPError, ConnectionError, OSError, TimeoutError, RuntimeError)
"""What a broker that went away raises under aio-pika (RuntimeError: a writer closed
under a publish); see `_may_pass` for what among them will not pass."""


class VerdictTimeout(RetryableError):
    """No verdict arrived in time; the job may still finish (ask again with `result`)."""


def _may_pass(exc: BaseException) -> bool:
    """Whether a publish that raised `exc` may succeed if made again."""
    if isinstance(exc, CortensorError | DeliveryError):
        return False
    if isinstance(exc, ChannelAccessRefused | ChannelNotFoundEntity | ChannelPreconditionFailed):
        return False
    return isinstance(exc, _GONE)


def _refusal(exc: BaseException, settings: Settings, exchange: str, routing_key: str) -> Exception:
    """The error that says why the broker refused a publish for good."""
    if isinstance(exc, DeliveryError):
        return Busy(
            "the network is busy: RabbitMQ refused the job (its queue is full, or still"
            " recovering from a restart); nothing was accepted, submit it again later"
        )
    if isinstance(exc, ChannelAccessRefused):
        return BadSetting(
            f"RabbitMQ refused to let {settings.principal or 'this login'} publish to"
            f" {exchange} with routing key {routing_key}: check your credentials file"
        )
    if isinstance(exc, ChannelNotFoundEntity):
        return SetupIncomplete(
            f"RabbitMQ has no exchange {exchange}: run `cortensor brokers setup`"
        )
    return BadInput(f"RabbitMQ refused the job: {exc}")


class _Awaited:
    """One wait for a job's verdict on the client's shared subscription; `unsubscribe`
    ends it, as a subscription of its own would be ended."""

    def __init__(
        self,
        awaited: dict[str, set[asyncio.Future[Verdict]]],
        subject: str,
        heard: asyncio.Future[Verdict],
    ) -> None:
        self._awaited, self._subject, self._heard = awaited, subject, heard

    async def unsubscribe(self) -> None:
        waiting = self._awaited.get(self._subject, set())
        waiting.discard(self._heard)
        if not waiting:
            self._awaited.pop(self._subject, None)


class Client:
    """A connection to the network for one user process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(settings.namespace)
        self.owner = settings.principal or ANONYMOUS
        """Whose jobs these are: the name the jobs go out under, the verdicts read back."""
        self._amqp: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._jobs: AbstractExchange | None = None
        self._reopening = asyncio.Lock()
        self._busy_until = 0.0
        """Until when (loop time) submissions are refused here (BUSY_HOLD_S)."""
        self._nc: NATS | None = None
        self._reconnected: asyncio.Future[None] | None = None
        """Resolved (and replaced) each time the NATS connection comes back."""
        self._awaited: dict[str, set[asyncio.Future[Verdict]]] = {}
        """The verdicts awaited here, by their subject (see `_subscribe`)."""
        self._verdict_subs: dict[str, Subscription] = {}
        """The shared subscription to each owner's job verdicts, by owner."""

    async def __aenter__(self) -> Self:
        try:
            self._amqp = await self._reach("RabbitMQ", lambda: amqp.connect_as(self.settings))
            await self._open_channel(ensure=True)
            self._reconnected = asyncio.get_running_loop().create_future()
            self._nc = await self._reach(
                "NATS",
                lambda: jetstream.connect_as(
                    self.settings, name="cortensor-client", reconnected_cb=self._on_reconnect
                ),
            )
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(NatsError, TimeoutError):
                await self._nc.drain()
            await self._nc.close()
        if self._amqp is not None:
            await self._amqp.close()

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("use the client in `async with Client(...)`")
        return self._nc

    async def _reach(self, server: reach.Server, connect: Callable[[], Awaitable[T]]) -> T:
        """Connect, retrying for up to Settings.connect_timeout_s; then BrokerUnavailable
        naming the server and its setting. A refused login (BadSetting) is not retried."""
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(
                        lambda e: (
                            isinstance(e, (*_GONE, NatsError)) and not isinstance(e, CortensorError)
                        )
                    ),
                    wait=wait_random_exponential(multiplier=0.1, max=RETRY_MAX_S),
                    reraise=True,
                ):
                    with attempt:
                        return await connect()
        except CortensorError:
            raise
        except (*_GONE, NatsError) as exc:
            raise BrokerUnavailable(reach.unreachable(server, self.settings)) from exc
        raise AssertionError("AsyncRetrying ends by returning or raising")

    async def _open_channel(self, *, ensure: bool = False) -> AbstractExchange:
        """A confirmed channel and the jobs exchange on it, opened again when the channel
        died (a broker restart, or a refusal that closed it)."""
        if self._amqp is None:
            raise RuntimeError("use the client in `async with Client(...)`")
        async with self._reopening:  # one channel for the publishes that found it dead
            if self._channel is None or self._channel.is_closed or self._jobs is None:
                self._channel = await self._amqp.channel(publisher_confirms=True)
                try:
                    self._jobs = await self._channel.get_exchange(
                        self.topology.jobs_exchange, ensure=ensure
                    )
                except ChannelNotFoundEntity as exc:
                    raise SetupIncomplete(
                        f"RabbitMQ has no exchange {self.topology.jobs_exchange}:"
                        " run `cortensor brokers setup`"
                    ) from exc
            return self._jobs

    async def publish_raw(
        self,
        body: bytes,
        *,
        message_id: str = "",
        within_s: float = DEFAULT_DEADLINE_S,
        owner: str | None = None,
    ) -> None:
        """Publish bytes as a job of `owner` (by default this client's), confirmed by the
        broker (for clients with their own JSON).

        A publish that fails because the broker went away is made again, with a jittered
        back-off, for up to `within_s` seconds (then BrokerUnavailable): the broker may
        then hold two copies, which the router takes as one by the job's id. A refusal
        that will not pass is raised at once: a full queue (Busy), a login not allowed
        to publish (BadSetting), a job the broker will not take (BadInput).
        """
        if self._amqp is None:  # a misuse, not an outage: never retried
            raise RuntimeError("use the client in `async with Client(...)`")
        routing_key = self.topology.jobs_routing_key(owner or self.owner)
        message = amqp.json_message(body, message_id=message_id)
        loop = asyncio.get_running_loop()
        if loop.time() < self._busy_until:
            raise Busy(
                f"the network is busy: it refused a job moments ago, so job {message_id or ''}"
                " was not sent; submit it again later"
            )
        try:
            async with asyncio.timeout(max(within_s, 1.0)):
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(_may_pass),
                    wait=wait_random_exponential(multiplier=0.05, max=RETRY_MAX_S),
                    stop=stop_after_delay(max(within_s, 1.0)),
                    reraise=True,
                ):
                    with attempt:
                        exchange = await self._open_channel()
                        await exchange.publish(message, routing_key=routing_key)
        except _GONE as exc:
            if not _may_pass(exc):
                name = self.topology.jobs_exchange
                refusal = _refusal(exc, self.settings, name, routing_key)
                if isinstance(refusal, Busy):
                    self._busy_until = loop.time() + BUSY_HOLD_S
                raise refusal from exc
            raise BrokerUnavailable(
                f"job {message_id or '(no id)'} not confirmed within {within_s:g} s: "
                + reach.unreachable("RabbitMQ", self.settings)
            ) from exc

    async def submit(
        self, job: JobRequest, *, timeout_s: float | None = None, owner: str | None = None
    ) -> UUID:
        """Publish a job (of `owner`, by default this client's); returns once the broker
        has it safely.

        Through a broker outage the job is published again until its deadline
        (`created_at` + `deadline_s`), or for `timeout_s` when given."""
        if timeout_s is None:
            ends = job.created_at + timedelta(seconds=job.deadline_s)
            timeout_s = (ends - utcnow()).total_seconds()
        await self.publish_raw(
            job.model_dump_json().encode(),
            message_id=str(job.job_id),
            within_s=timeout_s,
            owner=owner,
        )
        return job.job_id

    async def _last(self, subject: str) -> bytes | None:
        """The last message on one of this owner's subjects of the verdicts stream.

        A direct get: its API subject names the message's subject, which a permission can
        limit to this owner's (a plain get's API subject names only the stream)."""
        try:
            raw = await self.nc.jetstream().get_last_msg(
                self.topology.verdicts_stream, subject, direct=True
            )
        except NotFoundError:
            return None
        return raw.data

    async def result(self, job_id: UUID, *, owner: str | None = None) -> Verdict | None:
        """The verdict on a job (of `owner`, by default this client's), if there is one."""
        data = await self._last(self._verdicts(job_id, owner))
        return None if data is None else Verdict.model_validate_json(data)

    async def receipt(self, job_id: UUID, *, owner: str | None = None) -> JobReceipt | None:
        """The network's record that it accepted a job (published by the router once the
        job is in the ledger), if it has one: a job with a receipt and no verdict yet is
        pending; one with neither was never seen (or is past retention)."""
        subject = self.topology.receipt_subject(str(job_id), owner=owner or self.owner)
        data = await self._last(subject)
        return None if data is None else JobReceipt.model_validate_json(data)

    async def find_owner(self, job_id: UUID) -> str | None:
        """Whose job this is, by its verdict or its receipt under any owner; None when
        the stream holds neither. Only a login that may read every owner's verdicts (a
        gateway's) may ask: the direct get names `*` as the owner."""
        verdict = await self._last(self.topology.verdicts_subject(str(job_id), owner="*"))
        if verdict is not None:
            return Verdict.model_validate_json(verdict).owner
        receipt = await self._last(self.topology.receipt_subject(str(job_id), owner="*"))
        return None if receipt is None else JobReceipt.model_validate_json(receipt).owner

    async def _result_if_reachable(self, job_id: UUID, owner: str | None) -> Verdict | None:
        """The verdict, or None also while NATS is away (the waiter reads again later)."""
        try:
            return await self.result(job_id, owner=owner)
        except (NatsError, TimeoutError, ConnectionError):
            return None

    def _verdicts(self, job_id: UUID, owner: str | None) -> str:
        return self.topology.verdicts_subject(str(job_id), owner=owner or self.owner)

    async def _on_reconnect(self) -> None:
        """Wake the waiters: the NATS connection is back (nats-py calls this once it
        has subscribed again), and what was published meanwhile reached nobody."""
        done, self._reconnected = self._reconnected, asyncio.get_running_loop().create_future()
        if done is not None:
            done.set_result(None)

    async def _subscribe(
        self, job_id: UUID, owner: str | None
    ) -> tuple[_Awaited, asyncio.Future[Verdict]]:
        """Listen for a job's verdict (of `owner`, by default this client's): the future
        holds the first one heard.

        One subscription to an owner's job verdicts serves every job of that owner this
        client awaits, rather than one subscription per job: subscribing and
        unsubscribing for each job cost the client and nats-server two more protocol
        messages per job, and the server an update of its interest graph."""
        heard: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        whose = owner or self.owner
        key = self._verdicts(job_id, whose)
        self._awaited.setdefault(key, set()).add(heard)
        if whose not in self._verdict_subs:
            subject = self.topology.verdicts_subject("*", owner=whose)
            self._verdict_subs[whose] = await self.nc.subscribe(subject, cb=self._on_verdict)
        return _Awaited(self._awaited, key, heard), heard

    async def _on_verdict(self, msg: Msg) -> None:
        """A job verdict of an owner listened for: handed to whoever awaits it here (read
        only then)."""
        awaiting = self._awaited.get(msg.subject)
        if not awaiting:
            return
        verdict = Verdict.model_validate_json(msg.data)
        for heard in awaiting:
            if not heard.done():
                heard.set_result(verdict)

    async def _await(
        self,
        sub: _Awaited,
        heard: asyncio.Future[Verdict],
        job_id: UUID,
        timeout_s: float,
        owner: str | None,
    ) -> Verdict:
        """The verdict heard on `sub`, or read from the stream after a reconnect (one
        published while the connection was down is heard by nobody)."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + timeout_s
        try:
            while not heard.done():
                left = ends - loop.time()
                if left <= 0:
                    raise VerdictTimeout(
                        f"no verdict on job {job_id} within {timeout_s:g}s; it may still"
                        f" finish: `cortensor result {job_id}`"
                    )
                wake: set[asyncio.Future[Verdict] | asyncio.Future[None]] = {heard}
                if self._reconnected is not None:
                    wake.add(self._reconnected)
                await asyncio.wait(
                    wake, timeout=min(left, REREAD_S), return_when=asyncio.FIRST_COMPLETED
                )
                if not heard.done():
                    found = await self._result_if_reachable(job_id, owner)
                    if found is not None:
                        return found
            return heard.result()
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def wait(
        self, job_id: UUID, timeout_s: float = 60.0, *, owner: str | None = None
    ) -> Verdict:
        """Wait for a job's verdict (which may have arrived already)."""
        sub, heard = await self._subscribe(job_id, owner)
        done = await self._result_if_reachable(job_id, owner)
        if done is not None:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
            return done
        return await self._await(sub, heard, job_id, timeout_s, owner)

    async def run(
        self,
        job: JobRequest,
        timeout_s: float | None = None,
        *,
        on_part: Callable[[Verdict], None] | None = None,
        owner: str | None = None,
    ) -> Verdict:
        """Submit a job (of `owner`, by default this client's) and wait for its verdict.

        `on_part` is called once with the verdict on each part of a job that the network
        split (long audio, many texts) as the part is decided, for progress.
        """
        parts: Subscription | None = None
        if on_part is not None:
            callback = on_part
            seen: set[int | None] = set()

            async def part_decided(msg: Msg) -> None:
                verdict = Verdict.model_validate_json(msg.data)
                # A verdict may be published again (a late replica, a republish): the
                # stream keeps one copy, but a plain subscriber sees each publish.
                if verdict.part not in seen:
                    seen.add(verdict.part)
                    callback(verdict)

            subject = self.topology.part_verdicts_subject(
                str(job.job_id), "*", owner=owner or self.owner
            )
            parts = await self.nc.subscribe(subject, cb=part_decided)
        try:
            sub, heard = await self._subscribe(job.job_id, owner)
            try:
                await self.submit(job, owner=owner)
            except BaseException:
                with contextlib.suppress(NatsError):
                    await sub.unsubscribe()
                raise
            wait_s = timeout_s or job.deadline_s + 5.0
            return await self._await(sub, heard, job.job_id, wait_s, owner)
        finally:
            if parts is not None:
                with contextlib.suppress(NatsError):
                    await parts.unsubscribe()

    async def run_many(
        self, jobs: list[JobRequest], timeout_s: float | None = None
    ) -> list[Verdict]:
        """Submit jobs together and wait for all of their verdicts."""
        return list(await asyncio.gather(*(self.run(job, timeout_s) for job in jobs)))
