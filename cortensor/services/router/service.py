"""The router process: jobs in from RabbitMQ, assignments out to the class exchanges."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

import structlog
from pydantic import ValidationError

from cortensor import audio, metrics
from cortensor.adapters.celery_wire import TASK_RUN_ASSIGNMENTS, task_message
from cortensor.adapters.interfaces import Delivery, QueueFull, Signal, Subscription, Unroutable
from cortensor.adapters.ports import RouterPorts
from cortensor.adapters.topology import Topology
from cortensor.catalog import eligible_classes
from cortensor.errors import BadInput, Disposition, backoff_s, disposition
from cortensor.protocol import admission
from cortensor.protocol.intake import Rejected, Undeliverable, read_job
from cortensor.protocol.outages import judging_horizon
from cortensor.protocol.parts import AudioSpan, speech_split, split_job
from cortensor.protocol.placement import NodeView, candidates
from cortensor.protocol.planning import Backlog, Plan, Timing, one_class, parallel, plan
from cortensor.protocol.replication import REPLICAS
from cortensor.protocol.units import NewJob, OpenJob, assignments_for
from cortensor.schemas import (
    MAX_ERROR_CHARS,
    MAX_HEARTBEAT_BYTES,
    Assignment,
    JobRequest,
    NodeHeartbeat,
    Verdict,
    printable,
    utcnow,
)
from cortensor.services.announce import Announcer
from cortensor.services.keyring import Keyring
from cortensor.services.loops import every
from cortensor.services.outages import PATIENCE_S, OutageLog, pause_s
from cortensor.services.router.dead import DeadLetterReader
from cortensor.services.router.probes import ProbeSender
from cortensor.services.router.registry import NodeRegistry, heartbeat_refusal
from cortensor.settings import Settings

log = structlog.get_logger(__name__)
_JITTER = random.Random()
"""Spreads the back-offs of routers that failed together; not the routing draws."""


class JobMessage(NamedTuple):
    """A job as delivered: its bytes, the publisher's message id, and the routing key it
    was published with, which names its owner (`job.<owner>`; RabbitMQ's topic
    permissions let each client publish under its own name only)."""

    body: bytes
    message_id: str
    routing_key: str


Owned = tuple[JobRequest, str]
"""A valid job and its owner."""

ROUTER_WORKERS = 2
ADMIT_POLL_S = 0.1
"""How often a router whose fleet is full looks again (the ledger's counts of what
nodes hold are refreshed every Settings.registry_refresh_s)."""
"""Batches in progress at once: while one waits on the ledger or the broker, the next
batch gathers the jobs that arrive meanwhile."""


class Router:
    """Validates jobs, picks nodes, records assignments, and publishes them."""

    def __init__(
        self,
        settings: Settings,
        ports: RouterPorts,
        *,
        name: str = "router",
        seed: int | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.topology = Topology(settings.namespace)
        self.ledger, self.jobs, self.tasks, self.signals = (
            ports.ledger,
            ports.jobs,
            ports.tasks,
            ports.signals,
        )
        self.announcer = Announcer(ports.verdicts, self.topology, self.ledger)
        self.dead = (
            None
            if ports.dead is None
            else DeadLetterReader(settings, self.topology, self.ledger, ports.dead, self.announcer)
        )
        """Ends the readable jobs of the dead-letter queue (cortensor.services.router.dead)."""
        self.results = ports.results
        self.registry = NodeRegistry()
        self.backlog = Backlog()
        """Audio work sent to each node and not yet due (planning.Backlog)."""
        self.keyring = Keyring(ports.keys, source="router", refresh_s=settings.registry_refresh_s)
        self.outages = OutageLog(ports.outages, self.ledger, name=name)
        self.rng = random.Random(seed)
        self.prober = ProbeSender(settings, self.rng, self.backlog)
        self._intake: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self._due: set[UUID] = set()
        """Jobs guards named as needing replicas now (see _send_due)."""
        self._due_now = asyncio.Event()
        self._unlisten: Callable[[], Awaitable[None]] | None = None
        """Stops hearing guards' due notices (see _listen)."""
        self._stopping = False

    # -- policy: the core's (cortensor.protocol.planning), with this router's clock ------

    @property
    def timing(self) -> Timing:
        """How long a node has for one replica, from the settings."""
        return Timing.of(self.settings)

    def plan(self, job: OpenJob, needed: int, spread: frozenset[str] = frozenset()) -> Plan | str:
        """`needed` more replicas of a job on live nodes, or why there are none now (see
        planning.plan); the nodes chosen count as busier until the next refresh, and
        hold the replicas' work until their deadline (planning.Backlog)."""
        pool = self.live(eligible_classes(job.hw_class), job.model)  # type: ignore[arg-type]
        now = utcnow()
        outcome = plan(
            job,
            needed,
            pool=pool,
            rng=self.rng,
            now=now,
            timing=self.timing,
            temperature=self.settings.routing_temperature,
            spread=spread,
            ahead=self.backlog.ahead([n.node_id for n in pool], now),
        )
        if not isinstance(outcome, str):
            for node in outcome.nodes:
                self.registry.assigned(node)
            self.backlog.add(outcome.nodes, self.timing.work_s(job.params), outcome.deadline_at)
        return outcome

    def pinned(self, job: JobRequest) -> JobRequest:
        """A generate job open to several hardware classes, pinned to the one with the most
        live nodes of its model (planning.one_class): its replicas are then of one
        precision and compared token for token. Other jobs as they are."""
        classes = eligible_classes(job.hw_class)
        if job.task != "generate" or len(classes) < 2:
            return job
        chosen = one_class(classes, self.live(classes, job.model))
        return job if chosen is None else job.model_copy(update={"hw_class": chosen})

    def live(self, classes: Sequence[str], model: str) -> list[NodeView]:
        """Live nodes of these classes serving `model`."""
        return candidates(
            self.registry.views(),
            classes=classes,
            model=model,
            now=time.monotonic(),
            ttl=self.settings.node_ttl_s,
        )

    # -- I/O ------------------------------------------------------------------------------

    async def publish_assignments(self, assignments: Sequence[Assignment]) -> None:
        """Send assignments to their nodes' queues, one task message per node, each
        confirmed by the broker.

        Each is recorded as sent once confirmed. One that comes back unroutable (the
        node's queue is gone, or its broker is still loading it after a restart) is
        not: the sweep sends it again; the node's heartbeats, not this, say whether
        the node is gone.
        """
        by_node: dict[tuple[str, str], list[Assignment]] = defaultdict(list)
        for a in assignments:
            by_node[(a.node_id, a.hw_class)].append(a)

        unsent: set[UUID] = set()

        async def send(node_id: str, hw_class: str, batch: list[Assignment]) -> None:
            task_id = str(batch[0].assignment_id)
            body, headers = task_message(
                TASK_RUN_ASSIGNMENTS,
                task_id,
                {"assignments": [a.model_dump(mode="json") for a in batch]},
                origin=self.name,
            )
            for attempt in itertools.count(1):
                try:
                    await self.tasks.publish(
                        hw_class, node_id, body, headers=headers, message_id=task_id
                    )
                except Unroutable:
                    # Not proof that the node is gone: a broker restarting may return
                    # messages while it loads its queues. Its heartbeats decide; the
                    # assignments, never confirmed, are excused and sent again.
                    log.warning("node queue missing; assignments sent again later", node_id=node_id)
                    unsent.update(a.assignment_id for a in batch)
                except QueueFull:
                    # A full queue is a busy node, not a gone one: kept, and sent again
                    # after a back-off while its assignments have time (Overload).
                    s = self.settings
                    wait = backoff_s(
                        attempt, base_s=s.retry_base_s, cap_s=s.retry_cap_s, rng=_JITTER
                    )
                    if utcnow() + timedelta(seconds=wait) < min(a.deadline_at for a in batch):
                        log.info("node queue full; sent again later", node_id=node_id, wait=wait)
                        await asyncio.sleep(wait)
                        continue
                    log.warning("node queue full until its assignments' deadline", node_id=node_id)
                    unsent.update(a.assignment_id for a in batch)  # never the node's fault
                return

        await asyncio.gather(*(send(n, c, batch) for (n, c), batch in by_node.items()))
        # Only now is a missed deadline the node's: until then it is excused and sent
        # again (the router may stop, or its broker go, between its commit and here).
        await self.ledger.mark_sent(
            [a.assignment_id for a in assignments if a.assignment_id not in unsent]
        )

    async def _screen(self, message: JobMessage) -> Owned | str:
        """A valid job and its owner, or what became of an invalid one (dead-lettered or
        rejected). A job whose routing key names no owner is dead-lettered: nobody could
        read its verdict."""
        owner = self.topology.owner_of(message.routing_key)
        outcome = read_job(message.body, message.message_id)
        if owner is None:
            outcome = Undeliverable(
                f"routing key {message.routing_key!r} names no owner: publish with routing"
                f" key {self.topology.jobs_routing_key('<your name>')}"
            )
        if isinstance(outcome, Undeliverable):
            await self.jobs.dead_letter(
                message.body,
                outcome.reason,
                message_id=message.message_id,
                routing_key=message.routing_key,
            )
            log.warning("job dead-lettered", reason=outcome.reason)
            return "dead-lettered"
        assert owner is not None  # dead-lettered above
        if isinstance(outcome, Rejected):
            verdict = Verdict(
                job_id=outcome.job_id, owner=owner, status="rejected", reason=outcome.reason
            )
            return await self._reject(verdict, outcome.request)
        return outcome, owner

    async def _reject(self, verdict: Verdict, request: dict[str, Any]) -> str:
        """Record and announce a job's rejection (once, however often it is delivered)."""
        if await self.ledger.reject(verdict.job_id, request, verdict):
            await self.announcer.publish([verdict])
            metrics.verdicts_decided([verdict])
        log.info("job rejected", job_id=str(verdict.job_id), reason=verdict.reason)
        return "rejected"

    async def _cut(self, job: JobRequest, owner: str) -> list[audio.Chunk] | str:
        """The chunks of a transcribe job's audio, or "rejected" when it is unusable."""
        s = self.settings
        live = self.live(eligible_classes(job.hw_class), job.model)
        free = [n for n in live if n.inflight < n.capacity] or live
        split = speech_split(
            parallel(len(free), job.redundancy),
            batch=s.whisper_batch_size,
            window_s=s.chunk_s,
            min_part_s=s.chunk_min_s,
        )
        try:
            chunks = await asyncio.to_thread(
                audio.cut,
                job.audio_bytes(),
                chunk_s=s.chunk_s,
                max_seconds=s.max_audio_s,
                parts=split,
            )
        except BadInput as exc:
            verdict = Verdict(
                job_id=job.job_id,
                owner=owner,
                status="rejected",
                reason=f"audio: {exc}",
                task=job.task,
                model=job.model,
            )
            return await self._reject(verdict, {"task": job.task})
        return chunks

    async def take(self, messages: Sequence[JobMessage]) -> list[str]:
        """Handle job messages together; returns what became of each.

        Valid jobs are recorded, with their owners, with their first assignments in one
        statement, and each node gets its share of the assignments in one task message.
        Ack after this returns.
        """
        screened = [await self._screen(m) for m in messages]
        jobs: dict[UUID, Owned] = {}
        for item in screened:
            if not isinstance(item, str):
                jobs.setdefault(item[0].job_id, item)
        speech = [(j, owner) for j, owner in jobs.values() if j.task == "transcribe"]
        cuts = await asyncio.gather(*(self._cut(j, owner) for j, owner in speech))
        chunks = {j.job_id: c for (j, _), c in zip(speech, cuts, strict=True)}
        routed = await self.open_and_send(
            [
                (j, owner, c)
                for j, owner in jobs.values()
                if not isinstance(c := chunks.get(j.job_id, []), str)
            ]
        )
        routed.update({job_id: c for job_id, c in chunks.items() if isinstance(c, str)})
        outcomes = []
        seen: set[UUID] = set()
        for item in screened:
            if isinstance(item, str):
                outcomes.append(item)
            elif item[0].job_id in seen:
                outcomes.append("duplicate")
            else:
                seen.add(item[0].job_id)
                outcomes.append(routed[item[0].job_id])
        metrics.jobs_taken(outcomes)
        return outcomes

    async def open_and_send(
        self, jobs: Sequence[tuple[JobRequest, str, Sequence[AudioSpan]]]
    ) -> dict[UUID, str]:
        """Record valid jobs (job, owner, audio chunks), split into parts where they are
        long, with their first assignments, then publish them."""
        if not jobs:
            return {}
        now = utcnow()
        opened: list[NewJob] = []
        why: dict[UUID, str] = {}
        for given, owner, chunks in jobs:
            job = self.pinned(given)
            deadline_at = now + timedelta(seconds=job.deadline_s)
            parent, units = split_job(
                job,
                deadline_at,
                shard_inputs=(
                    self.settings.shard_prompts
                    if job.task == "generate"
                    else self.settings.shard_inputs
                ),
                chunks=chunks,
                owner=owner,
            )
            if parent is not None:
                opened.append(NewJob(parent, job.created_at, "split"))
            spread: frozenset[str] = frozenset()
            for unit in units:
                planned = self.plan(unit, unit.redundancy, spread)
                if isinstance(planned, str):
                    why[job.job_id] = planned
                    opened.append(NewJob(unit, job.created_at, "waiting"))
                else:
                    spread = planned.spread
                    chosen = replace(unit, redundancy=planned.redundancy)
                    made = assignments_for(unit, planned.targets, planned.deadline_at)
                    opened.append(NewJob(chosen, job.created_at, "running", made))
        written = await self.ledger.open_jobs(opened)
        again = [job.job_id for job, _, _ in jobs if job.job_id not in written]
        # The receipts of the jobs still undecided a second after their commit go out
        # off the jobs' path: their ack does not wait for them (a job delivered again
        # gets its receipt again).
        await self.announcer.receipts_soon([(job.job_id, owner) for job, owner, _ in jobs])
        await self.publish_assignments(
            [a for new in opened if new.job.job_id in written for a in new.assignments]
            + (await self.ledger.outstanding(again) if again else [])
        )
        outcomes = {}
        for job, _, _ in jobs:
            if job.job_id not in written:
                outcomes[job.job_id] = "duplicate"
            elif job.job_id in why:
                log.info("job waits for nodes", job_id=str(job.job_id), why=why[job.job_id])
                outcomes[job.job_id] = "waiting"
            else:
                outcomes[job.job_id] = "routed"
        return outcomes

    async def on_job(self, message: Delivery) -> None:
        """Queue a delivered job for the next batch."""
        self._intake.put_nowait(message)

    def has_room(self) -> bool:
        """Whether the fleet can take more work without queueing past its assignment
        window (cortensor.protocol.admission)."""
        now, s = time.monotonic(), self.settings
        live = [
            v for v in self.registry.views() if v.trust == "active" and v.live(now, s.node_ttl_s)
        ]
        held = admission.holding(
            {v.node_id: v.inflight for v in live}, self.registry.rates(), s.assignment_timeout_s
        )
        return admission.has_room(held, REPLICAS)

    async def _admit(self) -> None:
        """Wait until the fleet has room (or the router stops). Meanwhile the jobs stay
        in the router's queue, which refuses new ones past its bound (Busy)."""
        if self.has_room():
            return
        log.warning("fleet full; jobs wait in the queue")
        # Polled: room comes back through heartbeats and ledger refreshes alike.
        while not self.has_room() and not self._stopping:  # noqa: ASYNC110
            await asyncio.sleep(ADMIT_POLL_S)
        log.info("fleet has room again")

    async def _batches(self) -> None:
        """Take queued jobs in batches, as many as have arrived, while the fleet has room;
        ack each batch only after its ledger rows and assignments are durable."""
        while True:
            first = await self._intake.get()
            if first is None:
                return
            await self._admit()
            batch = [first]
            while len(batch) < self.settings.router_batch and not self._intake.empty():
                message = self._intake.get_nowait()
                if message is None:
                    self._intake.put_nowait(None)  # for the other workers
                    break
                batch.append(message)
            try:
                await self._settle(batch)
            except Exception:  # a worker outlives any batch: the broker delivers it again
                log.exception("jobs not settled; the broker delivers them again", jobs=len(batch))

    async def _held(self, batch: list[Delivery], exc: Exception) -> bool:
        """Hold a batch in hand while a server it needs is down (`exc` says which), and
        take it again after short back-offs until it goes through; True once it did
        and was acked. Handing it back to RabbitMQ instead would count a delivery per
        try, and a 15 s outage would push jobs past their delivery limit. False (the
        failure is no outage, or it outlasted PATIENCE_S): the caller settles it as any
        other failure."""
        if self.outages.failed(exc) is None:
            return False
        log.warning("jobs held in hand while a server is down", jobs=len(batch))
        started = time.monotonic()
        for attempt in itertools.count(1):
            await asyncio.sleep(pause_s(attempt))
            try:
                await self.take(
                    [JobMessage(m.body, m.message_id or "", m.routing_key or "") for m in batch]
                )
            except Exception as again:
                if self.outages.failed(again) is None or time.monotonic() - started > PATIENCE_S:
                    return False
                continue
            break
        await self._ack(batch)
        return True

    async def _ack(self, batch: list[Delivery]) -> None:
        """Ack a batch; an ack that the channel lost with its connection is no failure
        (RabbitMQ delivers those jobs again, and they are found recorded)."""
        acks = await asyncio.gather(*(m.ack() for m in batch), return_exceptions=True)
        lost = [a for a in acks if isinstance(a, Exception)]
        if lost:
            log.warning("acks lost with the channel; the jobs come again", jobs=len(lost))

    async def _settle(self, batch: list[Delivery]) -> None:
        """Take a batch of jobs and ack it once its ledger rows and assignments are
        durable. A batch that fails is taken again one job at a time, so that a job at
        fault never drags the others along: only it meets the failure's disposition."""
        try:
            await self.take(
                [JobMessage(m.body, m.message_id or "", m.routing_key or "") for m in batch]
            )
        except Exception as exc:
            if await self._held(batch, exc):
                return
            if len(batch) > 1:
                log.warning(
                    "jobs not handled together; taking them one at a time",
                    jobs=len(batch),
                    error=printable(repr(exc), 300),
                )
                await asyncio.gather(*(self._settle([m]) for m in batch))
                return
            # cortensor.errors.DISPOSITION decides. A failure that may pass (the ledger
            # or a broker under us) puts the job back after a back-off; RabbitMQ
            # dead-letters a job past x-delivery-limit. One that cannot pass parks it
            # with the reason.
            [m] = batch
            action = disposition(exc)
            log.exception("job not handled", message_id=m.message_id, action=str(action))
            if action is Disposition.REQUEUE:
                s = self.settings
                tries = int(m.headers.get("x-delivery-count", 0)) + 1
                wait = backoff_s(tries, base_s=s.retry_base_s, cap_s=s.retry_cap_s, rng=_JITTER)
                await asyncio.sleep(wait)
                await m.nack(requeue=True)
            else:
                why = printable(f"{type(exc).__name__}: {exc}", MAX_ERROR_CHARS)
                # The dead-letter reader ends the job with this reason (rejected when
                # its content is at fault, else failed).
                await self.jobs.dead_letter(
                    m.body,
                    why,
                    message_id=m.message_id or "",
                    routing_key=m.routing_key or "",
                    input_at_fault=action is Disposition.REJECT,
                )
                await m.ack()
            return
        await self._ack(batch)

    async def on_heartbeat(self, msg: Signal) -> None:
        """Track a node from its heartbeat. A node may speak only for itself, signed by
        its bound key, within MAX_HEARTBEAT_BYTES (checked before it is read), in a
        heartbeat the schema accepts, and not replay an old one; anything else is dropped
        and counted."""
        node = self.topology.node_of_heartbeat(msg.subject)
        if len(msg.data) > MAX_HEARTBEAT_BYTES:  # refused unread
            self.keyring.refuse(node or "", "oversized")
            return
        if not await self.keyring.check(node, msg.data, msg.headers) or node is None:
            return  # refused and counted by the keyring
        try:
            beat = NodeHeartbeat.model_validate_json(msg.data)
        except ValidationError as exc:
            self.keyring.refuse(node, "malformed")
            log.info("malformed heartbeat", node_id=node, error=printable(str(exc), 500))
            return
        if msg.subject != self.topology.heartbeat_subject(beat.node_id):
            self.keyring.refuse(node, "names another node")
            return
        replay = heartbeat_refusal(beat, utcnow())
        if replay is not None:
            self.keyring.refuse(beat.node_id, replay)
            return
        if self.registry.observe(beat, time.monotonic()):
            await self.ledger.upsert_nodes([beat])
            self.registry.recorded(beat.node_id)
            log.info(
                "node announced", node_id=beat.node_id, hw_class=beat.hw_class, status=beat.status
            )

    async def sweep(self) -> None:
        """One pass over waiting jobs and late assignments, after recording the outages
        seen (which excuse the assignments they overlapped, cortensor.protocol.outages)
        and giving the jobs whose deadline fell in one their extra time."""
        if await self.outages.flush():
            await self._listen()  # the connection that listened did not outlive the outage
        await self.ledger.extend_deadlines()
        made, failed = await self.ledger.route_waiting(self.plan)
        made += await self.ledger.reroute_expired(self.plan, horizon=await self._horizon())
        made += await self.ledger.top_up(self.plan)
        made += await self.probes()
        if made:
            await self.publish_assignments(made)
        await self.announcer.publish(failed)
        metrics.verdicts_decided(failed)
        await self.announcer.flush()

    async def _horizon(self) -> datetime | None:
        """Before when a missed assignment deadline may be judged: not while a result
        stored before it waits for the guards (cortensor.protocol.outages)."""
        if self.results is None:
            return None
        return judging_horizon(await self.results.oldest_untaken(), utcnow())

    def _heard_due(self, job_id: UUID) -> None:
        """A guard committed a job that needs replicas now: send them in the next pass."""
        self._due.add(job_id)
        self._due_now.set()

    async def _send_due(self, stop: asyncio.Event) -> None:
        """Send the replicas guards asked for as soon as they ask (an `auto` job's checks
        once its leader has answered), rather than at the next sweep. A failure here
        only delays them: the sweep's top-up finds the same jobs."""
        while not stop.is_set():
            await self._due_now.wait()
            self._due_now.clear()
            due, self._due = list(self._due), set()
            if not due:
                continue
            try:
                made = await self.ledger.top_up(self.plan, due)
                if made:
                    await self.publish_assignments(made)
            except Exception:
                log.exception("replicas due not sent; the sweep will", jobs=len(due))

    async def _listen(self) -> None:
        """Hear the guards' due notices (`_heard_due`) on a connection of the ledger's,
        in place of the one that listened before, if any: a notice lost while PostgreSQL
        was away only waits for the sweep's top-up."""
        if self._unlisten is not None:
            with contextlib.suppress(Exception):  # its connection may be gone
                await self._unlisten()
            self._unlisten = None
        self._unlisten = await self.ledger.listen_due(self._heard_due)

    async def probes(self) -> list[Assignment]:
        """Record the probes due now, for nodes of every trust state (see
        cortensor.services.router.probes); the guard judges them against their references.
        Their nodes count as busier until the next refresh, and hold the probes' work in
        the backlog until their deadline, as for real replicas (`plan`)."""
        made = await self.prober.send(self.ledger, self.registry.views())
        for assignment in made:
            self.registry.assigned(assignment.node_id)
        return made

    async def refresh(self) -> None:
        """Reload scores and outstanding work; record when nodes were last seen; count
        the heartbeats refused since the last refresh; forget nodes long silent."""
        for node_id in self.registry.prune(time.monotonic()):
            log.info("silent node forgotten", node_id=node_id)
        self.backlog.prune(utcnow())
        await self.ledger.upsert_nodes(self.registry.heartbeats())
        self.registry.update_stats(await self.ledger.node_stats())
        beats = {b.node_id: (b.inflight, b.processed) for b in self.registry.heartbeats()}
        metrics.fleet_seen(self.registry.views(), beats, self.registry.rates())
        await self.keyring.flush()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then finish the jobs in hand.

        The adapters stay open: whoever gave them closes them.
        """
        s = self.settings
        self.prober.load(s.probes_path)
        beats: Subscription = await self.signals.subscribe(
            self.topology.heartbeat_subject("*"), self.on_heartbeat
        )
        await self.refresh()
        await self._listen()
        workers = [asyncio.create_task(self._batches()) for _ in range(ROUTER_WORKERS)]
        await self.jobs.consume(self.on_job)
        if self.dead is not None:
            await self.dead.start()
        log.info("router ready", queue=self.topology.router_queue)
        loops = [
            asyncio.create_task(
                every(s.sweep_interval_s, self.sweep, stop, on_error=self.outages.failed)
            ),
            asyncio.create_task(
                every(s.registry_refresh_s, self.refresh, stop, on_error=self.outages.failed)
            ),
            asyncio.create_task(self._send_due(stop)),
        ]
        await stop.wait()
        self._due_now.set()  # wakes _send_due to see the stop
        self._stopping = True  # a worker waiting for room takes what it holds
        if self._unlisten is not None:
            with contextlib.suppress(Exception):
                await self._unlisten()
        await self.jobs.cancel()
        if self.dead is not None:
            await self.dead.stop()
        await beats.unsubscribe()
        for _ in workers:
            self._intake.put_nowait(None)
        await asyncio.gather(*loops, *workers)
        await self.announcer.receipts_sent()
        await self.announcer.flush()
        log.info("router stopped")
