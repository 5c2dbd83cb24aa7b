"""The router process: jobs in from RabbitMQ, assignments out to the class exchanges."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from datetime import timedelta

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from aio_pika.exceptions import DeliveryError
from nats.aio.msg import Msg
from pydantic import ValidationError

from cortensor.announce import Announcer
from cortensor.catalog import eligible_classes
from cortensor.errors import NoEligibleNodes
from cortensor.intake import Rejected, Undeliverable, read_job
from cortensor.ledger.routing import OpenJob, RouterLedger
from cortensor.loops import every
from cortensor.router.registry import NodeRegistry
from cortensor.routing import candidates, choose
from cortensor.schemas import Assignment, JobRequest, NodeHeartbeat, Verdict, utcnow
from cortensor.settings import Settings
from cortensor.topology import Topology
from cortensor.transport import amqp, jetstream
from cortensor.transport.celery_wire import TASK_RUN_ASSIGNMENT, task_message

log = structlog.get_logger(__name__)


class Router:
    """Validates jobs, picks nodes, records assignments, and publishes them."""

    def __init__(
        self, settings: Settings, *, name: str = "router", seed: int | None = None
    ) -> None:
        self.settings = settings
        self.name = name
        self.topology = Topology(settings.namespace)
        self.registry = NodeRegistry()
        self.rng = random.Random(seed)
        self._exchanges: dict[str, AbstractExchange] = {}
        self._inflight: set[asyncio.Task[None]] = set()

    # -- policy ---------------------------------------------------------------------------

    def plan(self, job: OpenJob, needed: int) -> Sequence[Assignment] | str:
        """Assignments for `needed` more replicas of a job, or why there are none now."""
        classes = eligible_classes(job.hw_class)  # type: ignore[arg-type]
        pool = candidates(
            self.registry.views(),
            classes=classes,
            model=job.model,
            now=time.monotonic(),
            ttl=self.settings.node_ttl_s,
            exclude=job.taken,
        )
        try:
            chosen = choose(
                pool, needed, rng=self.rng, temperature=self.settings.routing_temperature
            )
        except NoEligibleNodes:
            return (
                f"needs {needed} more distinct live node(s) of class {' or '.join(classes)}"
                f" serving {job.model}; {len(pool)} available"
            )
        deadline = min(
            utcnow() + timedelta(seconds=self.settings.assignment_timeout_s), job.deadline_at
        )
        for node in chosen:
            self.registry.assigned(node.node_id)
        return [
            Assignment(
                job_id=job.job_id,
                node_id=node.node_id,
                task=job.task,
                model=job.model,
                inputs=job.inputs,
                hw_class=node.hw_class,
                deadline_at=deadline,
                attempt=job.attempt,
            )
            for node in chosen
        ]

    @staticmethod
    def failed(job: OpenJob, why: str) -> Verdict:
        """The verdict on a job that found no nodes before its deadline."""
        return Verdict(
            job_id=job.job_id,
            status="failed",
            reason=f"no eligible nodes before the deadline: {why}",
            task=job.task,
            model=job.model,
        )

    # -- I/O ------------------------------------------------------------------------------

    async def publish_assignments(self, assignments: Sequence[Assignment]) -> None:
        """Send each assignment to its node's queue, confirmed by the broker.

        A node whose queue is gone (the message comes back unroutable) is dropped from
        the registry; its assignment times out and is routed again.
        """

        async def send(a: Assignment) -> None:
            task_id = str(a.assignment_id)
            body, headers = task_message(
                TASK_RUN_ASSIGNMENT,
                task_id,
                {"assignment": a.model_dump(mode="json")},
                origin=self.name,
            )
            message = aio_pika.Message(
                body,
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                correlation_id=task_id,
                message_id=task_id,
            )
            try:
                await self._exchanges[a.hw_class].publish(
                    message, routing_key=a.node_id, mandatory=True
                )
            except DeliveryError:
                log.warning("node queue missing; node dropped", node_id=a.node_id)
                self.registry.forget(a.node_id)

        await asyncio.gather(*(send(a) for a in assignments))

    async def take(self, body: bytes, message_id: str = "") -> str:
        """Handle one job message; returns what became of it. Ack after this returns."""
        outcome = read_job(body)
        if isinstance(outcome, Undeliverable):
            await amqp.dead_letter(
                self._channel, self.topology, body, outcome.reason, message_id=message_id
            )
            log.warning("job dead-lettered", reason=outcome.reason)
            return "dead-lettered"
        if isinstance(outcome, Rejected):
            verdict = Verdict(job_id=outcome.job_id, status="rejected", reason=outcome.reason)
            if await self.ledger.reject(outcome.job_id, outcome.request, verdict):
                await self.announcer.publish([verdict])
            log.info("job rejected", job_id=str(outcome.job_id), reason=outcome.reason)
            return "rejected"
        return await self.route(outcome)

    async def route(self, job: JobRequest) -> str:
        """Record a valid job with its first assignments, then publish them."""
        deadline_at = utcnow() + timedelta(seconds=job.deadline_s)
        open_job = OpenJob(
            job_id=job.job_id,
            task=job.task,
            model=job.model,
            redundancy=job.redundancy,
            hw_class=job.hw_class,
            inputs=job.inputs,
            deadline_at=deadline_at,
            taken=frozenset(),
        )
        plan = self.plan(open_job, job.redundancy)
        assignments = [] if isinstance(plan, str) else list(plan)
        if not await self.ledger.open_job(job, deadline_at, assignments):
            return "duplicate"
        if not assignments:
            log.info("job waits for nodes", job_id=str(job.job_id), why=plan)
            return "waiting"
        await self.publish_assignments(assignments)
        return "routed"

    async def on_job(self, message: AbstractIncomingMessage) -> None:
        """Consume one job; ack only after its ledger rows and assignments are durable."""
        task = asyncio.current_task()
        if task is not None:  # so that stopping waits for the jobs in hand
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        try:
            await self.take(message.body, message.message_id or "")
        except Exception:
            # The ledger or a broker failed under us: put the job back and slow down.
            # After x-delivery-limit attempts RabbitMQ dead-letters it.
            log.exception("job not handled; requeued")
            await asyncio.sleep(1.0)
            await message.nack(requeue=True)
            return
        await message.ack()

    async def on_heartbeat(self, msg: Msg) -> None:
        """Track a node from its heartbeat; a node may speak only for itself."""
        try:
            beat = NodeHeartbeat.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("malformed heartbeat ignored", subject=msg.subject, error=str(exc))
            return
        if msg.subject != self.topology.heartbeat_subject(beat.node_id):
            log.warning("heartbeat for another node ignored", subject=msg.subject)
            return
        if self.registry.observe(beat, time.monotonic()):
            await self.ledger.upsert_nodes([beat])
            self.registry.recorded(beat.node_id)
            log.info(
                "node announced", node_id=beat.node_id, hw_class=beat.hw_class, status=beat.status
            )

    async def sweep(self) -> None:
        """One pass over waiting jobs and late assignments."""
        made, failed = await self.ledger.route_waiting(self.plan, self.failed)
        made += await self.ledger.reroute_expired(self.plan)
        if made:
            await self.publish_assignments(made)
        await self.announcer.publish(failed)
        await self.announcer.flush()

    async def refresh(self) -> None:
        """Reload scores and outstanding work; record when nodes were last seen."""
        await self.ledger.upsert_nodes(self.registry.heartbeats())
        self.registry.update_stats(await self.ledger.node_stats())

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then finish the jobs in hand and close."""
        s = self.settings
        self.ledger = await RouterLedger.connect(s.asyncpg_dsn)
        connection = await amqp.connect(s.amqp_url)
        self._channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await self._channel.set_qos(prefetch_count=s.router_prefetch)
        for hw_class in self.topology.hw_classes:
            self._exchanges[hw_class] = await self._channel.get_exchange(
                self.topology.hw_exchange(hw_class)
            )
        nc = await jetstream.connect(s.nats_url, name=self.name)
        self.announcer = Announcer(nc.jetstream(), self.topology, self.ledger)
        await nc.subscribe(self.topology.heartbeat_subject("*"), cb=self.on_heartbeat)
        await self.refresh()
        queue = await self._channel.get_queue(self.topology.router_queue)
        tag = await queue.consume(self.on_job)
        log.info("router ready", queue=queue.name)
        loops = [
            asyncio.create_task(every(s.sweep_interval_s, self.sweep, stop)),
            asyncio.create_task(every(s.registry_refresh_s, self.refresh, stop)),
        ]
        await stop.wait()
        await queue.cancel(tag)
        await asyncio.gather(*loops, *self._inflight)
        await self.announcer.flush()
        await nc.drain()
        await connection.close()
        await self.ledger.close()
        log.info("router stopped")
