"""The async SDK: publish jobs to the network and wait for their verdicts.

async with Client(Settings()) as client:
    verdict = await client.run(JobRequest(inputs=["hello"]), timeout=30)

A client publishes as its principal (the `principal` of its credentials; `anonymous`
without one): its jobs go out with the routing key `job.<owner>`, and it reads only the
verdict subjects of that owner, which is all its permissions let it read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Self
from uuid import UUID

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import DeliveryError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.topology import Topology
from cortensor.errors import Busy, RetryableError
from cortensor.schemas import ANONYMOUS, JobRequest, Verdict
from cortensor.settings import Settings


class VerdictTimeout(RetryableError):
    """No verdict arrived in time; the job may still finish (ask again with `result`)."""


class Client:
    """A connection to the network for one user process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topology = Topology(settings.namespace)
        self.owner = settings.principal or ANONYMOUS
        """Whose jobs these are: the name the jobs go out under, the verdicts read back."""
        self._amqp: AbstractRobustConnection | None = None
        self._nc: NATS | None = None

    async def __aenter__(self) -> Self:
        self._amqp = await amqp.connect_as(self.settings)
        self._channel: AbstractChannel = await self._amqp.channel(publisher_confirms=True)
        self._jobs: AbstractExchange = await self._channel.get_exchange(self.topology.jobs_exchange)
        self._nc = await jetstream.connect_as(self.settings, name="cortensor-client")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._nc is not None:
            await self._nc.drain()
        if self._amqp is not None:
            await self._amqp.close()

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("use the client in `async with Client(...)`")
        return self._nc

    async def publish_raw(self, body: bytes, *, message_id: str = "") -> None:
        """Publish bytes as a job of this client's owner, confirmed by the broker (for
        clients with their own JSON)."""
        message = amqp.json_message(body, message_id=message_id)
        try:
            await self._jobs.publish(
                message, routing_key=self.topology.jobs_routing_key(self.owner)
            )
        except DeliveryError as exc:
            # A nack: the router's queue is full (reject-publish); nothing was accepted.
            raise Busy(
                f"the network is busy: job {message_id or '(no id)'} was refused, nothing"
                " was accepted; submit it again later"
            ) from exc

    async def submit(self, job: JobRequest) -> UUID:
        """Publish a job; returns once the broker has it safely."""
        await self.publish_raw(job.model_dump_json().encode(), message_id=str(job.job_id))
        return job.job_id

    async def result(self, job_id: UUID) -> Verdict | None:
        """The verdict on a job, if there is one yet.

        A direct get: its API subject names the verdict's subject, which a permission can
        limit to this owner's (a plain get's API subject names only the stream)."""
        try:
            raw = await self.nc.jetstream().get_last_msg(
                self.topology.verdicts_stream, self._verdicts(job_id), direct=True
            )
        except NotFoundError:
            return None
        assert raw.data is not None
        return Verdict.model_validate_json(raw.data)

    def _verdicts(self, job_id: UUID) -> str:
        return self.topology.verdicts_subject(str(job_id), owner=self.owner)

    async def _subscribe(self, job_id: UUID) -> Subscription:
        return await self.nc.subscribe(self._verdicts(job_id), max_msgs=1)

    async def _await(self, sub: Subscription, job_id: UUID, timeout_s: float) -> Verdict:
        try:
            msg = await sub.next_msg(timeout=timeout_s)
        except TimeoutError as exc:
            raise VerdictTimeout(
                f"no verdict on job {job_id} within {timeout_s:g}s; it may still finish:"
                f" `cortensor result {job_id}`"
            ) from exc
        finally:
            await sub.unsubscribe()
        return Verdict.model_validate_json(msg.data)

    async def wait(self, job_id: UUID, timeout_s: float = 60.0) -> Verdict:
        """Wait for a job's verdict (which may have arrived already)."""
        sub = await self._subscribe(job_id)
        done = await self.result(job_id)
        if done is not None:
            await sub.unsubscribe()
            return done
        return await self._await(sub, job_id, timeout_s)

    async def run(
        self,
        job: JobRequest,
        timeout_s: float | None = None,
        *,
        on_part: Callable[[Verdict], None] | None = None,
    ) -> Verdict:
        """Submit a job and wait for its verdict.

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

            subject = self.topology.part_verdicts_subject(str(job.job_id), "*", owner=self.owner)
            parts = await self.nc.subscribe(subject, cb=part_decided)
        try:
            sub = await self._subscribe(job.job_id)
            try:
                await self.submit(job)
            except BaseException:
                await sub.unsubscribe()
                raise
            return await self._await(sub, job.job_id, timeout_s or job.deadline_s + 5.0)
        finally:
            if parts is not None:
                await parts.unsubscribe()

    async def run_many(
        self, jobs: list[JobRequest], timeout_s: float | None = None
    ) -> list[Verdict]:
        """Submit jobs together and wait for all of their verdicts."""
        return list(await asyncio.gather(*(self.run(job, timeout_s) for job in jobs)))
