"""The router process: jobs in from RabbitMQ, assignments out to the class exchanges."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any
from uuid import UUID

import structlog
from pydantic import ValidationError

from cortensor import audio
from cortensor.adapters.celery_wire import TASK_RUN_ASSIGNMENTS, task_message
from cortensor.adapters.interfaces import Delivery, Signal, Subscription, Unroutable
from cortensor.adapters.ports import RouterPorts
from cortensor.adapters.topology import Topology
from cortensor.catalog import eligible_classes
from cortensor.errors import BadInput, NoEligibleNodes
from cortensor.inference.probes import load_probes
from cortensor.protocol.intake import Rejected, Undeliverable, read_job
from cortensor.protocol.parts import AudioSpan, split_job
from cortensor.protocol.placement import NodeView, candidates, choose
from cortensor.protocol.probing import Prober
from cortensor.protocol.replication import REPLICAS, replicas
from cortensor.protocol.units import NewJob, OpenJob, assignments_for
from cortensor.schemas import Assignment, JobRequest, NodeHeartbeat, Verdict, utcnow
from cortensor.services.announce import Announcer
from cortensor.services.loops import every
from cortensor.services.router.registry import NodeRegistry
from cortensor.settings import Settings

log = structlog.get_logger(__name__)

ROUTER_WORKERS = 2
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
        self.registry = NodeRegistry()
        self.rng = random.Random(seed)
        self.prober = Prober(settings, self.rng)
        self._intake: asyncio.Queue[Delivery | None] = asyncio.Queue()

    # -- policy ---------------------------------------------------------------------------

    def plan(
        self, job: OpenJob, needed: int, spread: set[str] | None = None
    ) -> Sequence[Assignment] | str:
        """Assignments for `needed` more replicas of a job, or why there are none now.

        An `auto` job routed for the first time gets as many replicas as adaptive
        replication gives the node drawn first (cortensor.protocol.replication).
        """
        if job.auto and not job.taken and needed == job.redundancy:
            return self.plan_auto(job, spread)
        return self.plan_fixed(job, needed, spread)

    def plan_auto(self, job: OpenJob, spread: set[str] | None) -> Sequence[Assignment] | str:
        """The first node by weighted sampling, alone when its run of valid results for
        the model earns it, else with REPLICAS - 1 more."""
        first = self.plan_fixed(job, 1, spread)
        if isinstance(first, str):
            return first
        leader = first[0].node_id
        if replicas(self.registry.streak(leader, job.model), self.rng) == 1:
            return first
        more = self.plan_fixed(replace(job, taken=job.taken | {leader}), REPLICAS - 1, spread)
        if isinstance(more, str):
            return more
        return [*first, *more]

    def plan_fixed(
        self, job: OpenJob, needed: int, spread: set[str] | None = None
    ) -> Sequence[Assignment] | str:
        """Assignments for `needed` more replicas of a job, or why there are none now.

        `spread` holds the nodes already given other parts of the same split job: they
        are passed over while other eligible nodes remain, so that the parts run on as
        many nodes at once as there are; the chosen nodes are added to it.
        """
        classes = eligible_classes(job.hw_class)  # type: ignore[arg-type]
        eligible = self.live(classes, job.model, job.taken)
        if spread:
            fresh = self.live(classes, job.model, job.taken | spread)
            if len(fresh) >= needed:
                eligible = fresh
            else:
                spread.clear()  # every node has a part: start another round
        try:
            chosen = choose(
                eligible, needed, rng=self.rng, temperature=self.settings.routing_temperature
            )
        except NoEligibleNodes:
            return (
                f"needs {needed} more distinct live node(s) of class {' or '.join(classes)}"
                f" serving {job.model}; {len(eligible)} available"
            )
        deadline = min(utcnow() + timedelta(seconds=self.timeout_s(job)), job.deadline_at)
        for node in chosen:
            self.registry.assigned(node.node_id)
            if spread is not None:
                spread.add(node.node_id)
        return assignments_for(job, [(n.node_id, n.hw_class) for n in chosen], deadline)

    def parallel(self, job: JobRequest) -> int:
        """How many parts of `job` can run at once: its eligible live nodes over its
        redundancy."""
        live = self.live(eligible_classes(job.hw_class), job.model, frozenset())
        replicas = REPLICAS if job.redundancy == "auto" else job.redundancy
        return max(1, len(live) // replicas)

    def live(self, classes: Sequence[str], model: str, exclude: frozenset[str]) -> list[NodeView]:
        """Live nodes of these classes serving `model`, except those in `exclude`."""
        return candidates(
            self.registry.views(),
            classes=classes,
            model=model,
            now=time.monotonic(),
            ttl=self.settings.node_ttl_s,
            exclude=exclude,
        )

    def timeout_s(self, job: OpenJob) -> float:
        """How long a node has for one replica of `job`: longer for longer audio."""
        p = job.params
        audio_s = float(p.get("end_s", 0.0)) - float(p.get("start_s", 0.0))
        return self.settings.assignment_timeout_s + self.settings.audio_timeout_factor * audio_s

    @staticmethod
    def failed(job: OpenJob, why: str) -> Verdict:
        """The verdict on a job that found no nodes before its deadline."""
        return Verdict(
            job_id=job.job_id,
            status="failed",
            reason=f"no eligible nodes before the deadline: {why}",
            task=job.task,
            model=job.model,
            parent_id=job.parent_id,
            part=job.part,
        )

    # -- I/O ------------------------------------------------------------------------------

    async def publish_assignments(self, assignments: Sequence[Assignment]) -> None:
        """Send assignments to their nodes' queues, one task message per node, each
        confirmed by the broker.

        A node whose queue is gone (the message comes back unroutable) is dropped from
        the registry; its assignments time out and are routed again.
        """
        by_node: dict[tuple[str, str], list[Assignment]] = defaultdict(list)
        for a in assignments:
            by_node[(a.node_id, a.hw_class)].append(a)

        async def send(node_id: str, hw_class: str, batch: list[Assignment]) -> None:
            task_id = str(batch[0].assignment_id)
            body, headers = task_message(
                TASK_RUN_ASSIGNMENTS,
                task_id,
                {"assignments": [a.model_dump(mode="json") for a in batch]},
                origin=self.name,
            )
            try:
                await self.tasks.publish(
                    hw_class, node_id, body, headers=headers, message_id=task_id
                )
            except Unroutable:
                log.warning("node queue missing; node dropped", node_id=node_id)
                self.registry.forget(node_id)

        await asyncio.gather(*(send(n, c, batch) for (n, c), batch in by_node.items()))

    async def _screen(self, body: bytes, message_id: str) -> JobRequest | str:
        """A valid job, or what became of an invalid one (dead-lettered or rejected)."""
        outcome = read_job(body)
        if isinstance(outcome, Undeliverable):
            await self.jobs.dead_letter(body, outcome.reason, message_id=message_id)
            log.warning("job dead-lettered", reason=outcome.reason)
            return "dead-lettered"
        if isinstance(outcome, Rejected):
            verdict = Verdict(job_id=outcome.job_id, status="rejected", reason=outcome.reason)
            return await self._reject(verdict, outcome.request)
        return outcome

    async def _reject(self, verdict: Verdict, request: dict[str, Any]) -> str:
        """Record and announce a job's rejection (once, however often it is delivered)."""
        if await self.ledger.reject(verdict.job_id, request, verdict):
            await self.announcer.publish([verdict])
        log.info("job rejected", job_id=str(verdict.job_id), reason=verdict.reason)
        return "rejected"

    async def _cut(self, job: JobRequest) -> list[audio.Chunk] | str:
        """The chunks of a transcribe job's audio, or "rejected" when it is unusable."""
        s = self.settings
        try:
            chunks = await asyncio.to_thread(
                audio.cut,
                job.audio_bytes(),
                chunk_s=s.chunk_s,
                min_chunk_s=s.chunk_min_s,
                max_seconds=s.max_audio_s,
                parallel=self.parallel(job),
            )
        except BadInput as exc:
            verdict = Verdict(
                job_id=job.job_id,
                status="rejected",
                reason=f"audio: {exc}",
                task=job.task,
                model=job.model,
            )
            return await self._reject(verdict, {"task": job.task})
        return chunks

    async def take(self, messages: Sequence[tuple[bytes, str]]) -> list[str]:
        """Handle job messages (body, message id) together; returns what became of each.

        Valid jobs are recorded with their first assignments in one statement, and each
        node gets its share of the assignments in one task message. Ack after this
        returns.
        """
        screened = [await self._screen(body, message_id) for body, message_id in messages]
        jobs = {j.job_id: j for j in screened if isinstance(j, JobRequest)}
        speech = [j for j in jobs.values() if j.task == "transcribe"]
        cuts = await asyncio.gather(*map(self._cut, speech))
        chunks = {j.job_id: c for j, c in zip(speech, cuts, strict=True)}
        routed = await self.route(
            [(j, c) for j in jobs.values() if not isinstance(c := chunks.get(j.job_id, []), str)]
        )
        routed.update({job_id: c for job_id, c in chunks.items() if isinstance(c, str)})
        outcomes = []
        seen: set[UUID] = set()
        for item in screened:
            if isinstance(item, str):
                outcomes.append(item)
            elif item.job_id in seen:
                outcomes.append("duplicate")
            else:
                seen.add(item.job_id)
                outcomes.append(routed[item.job_id])
        return outcomes

    async def route(
        self, jobs: Sequence[tuple[JobRequest, Sequence[AudioSpan]]]
    ) -> dict[UUID, str]:
        """Record valid jobs (split into parts where they are long) with their first
        assignments, then publish them."""
        if not jobs:
            return {}
        now = utcnow()
        opened: list[NewJob] = []
        why: dict[UUID, str] = {}
        for job, chunks in jobs:
            deadline_at = now + timedelta(seconds=job.deadline_s)
            parent, units = split_job(
                job, deadline_at, shard_inputs=self.settings.shard_inputs, chunks=chunks
            )
            if parent is not None:
                opened.append(NewJob(parent, job.created_at, "split"))
            spread: set[str] = set()
            for unit in units:
                plan = self.plan(unit, unit.redundancy, spread)
                if isinstance(plan, str):
                    why[job.job_id] = plan
                    opened.append(NewJob(unit, job.created_at, "waiting"))
                else:
                    chosen = replace(unit, redundancy=len(plan)) if unit.auto else unit
                    opened.append(NewJob(chosen, job.created_at, "running", plan))
        written = await self.ledger.open_jobs(opened)
        again = [job.job_id for job, _ in jobs if job.job_id not in written]
        await self.publish_assignments(
            [a for new in opened if new.job.job_id in written for a in new.assignments]
            + (await self.ledger.outstanding(again) if again else [])
        )
        outcomes = {}
        for job, _ in jobs:
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

    async def _batches(self) -> None:
        """Take queued jobs in batches, as many as have arrived; ack each batch only after
        its ledger rows and assignments are durable."""
        while True:
            first = await self._intake.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.settings.router_batch and not self._intake.empty():
                message = self._intake.get_nowait()
                if message is None:
                    self._intake.put_nowait(None)  # for the other workers
                    break
                batch.append(message)
            try:
                await self.take([(m.body, m.message_id or "") for m in batch])
            except Exception:
                # The ledger or a broker failed under us: put the jobs back and slow
                # down. After x-delivery-limit attempts RabbitMQ dead-letters a job.
                log.exception("jobs not handled; requeued", jobs=len(batch))
                await asyncio.sleep(1.0)
                await asyncio.gather(*(m.nack(requeue=True) for m in batch))
                continue
            await asyncio.gather(*(m.ack() for m in batch))

    async def on_heartbeat(self, msg: Signal) -> None:
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
        made += await self.ledger.top_up(self.plan)
        made += await self.probes()
        if made:
            await self.publish_assignments(made)
        await self.announcer.publish(failed)
        await self.announcer.flush()

    async def probes(self) -> list[Assignment]:
        """Probe every live node on probation or in quarantine whose turn it is; the
        guard admits it after enough answers match the references."""
        now = time.monotonic()
        made: list[Assignment] = []
        opened: list[NewJob] = []
        for node in self.registry.views():
            job = self.prober.job_for(node) if self.prober.due(node, now) else None
            if job is None:
                continue
            deadline = utcnow() + timedelta(seconds=self.timeout_s(job))
            job = replace(job, deadline_at=deadline)
            [assignment] = assignments_for(job, [(node.node_id, node.hw_class)], deadline)
            self.prober.sent(node.node_id, now)
            made.append(assignment)
            opened.append(NewJob(job, utcnow(), "running", [assignment]))
        if opened:
            await self.ledger.open_jobs(opened)
        return made

    async def refresh(self) -> None:
        """Reload scores and outstanding work; record when nodes were last seen."""
        await self.ledger.upsert_nodes(self.registry.heartbeats())
        self.registry.update_stats(await self.ledger.node_stats())

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then finish the jobs in hand.

        The adapters stay open: whoever gave them closes them.
        """
        s = self.settings
        self.prober.probe_set = load_probes(s.models_dir)
        beats: Subscription = await self.signals.subscribe(
            self.topology.heartbeat_subject("*"), self.on_heartbeat
        )
        await self.refresh()
        workers = [asyncio.create_task(self._batches()) for _ in range(ROUTER_WORKERS)]
        await self.jobs.consume(self.on_job)
        log.info("router ready", queue=self.topology.router_queue)
        loops = [
            asyncio.create_task(every(s.sweep_interval_s, self.sweep, stop)),
            asyncio.create_task(every(s.registry_refresh_s, self.refresh, stop)),
        ]
        await stop.wait()
        await self.jobs.cancel()
        await beats.unsubscribe()
        for _ in workers:
            self._intake.put_nowait(None)
        await asyncio.gather(*loops, *workers)
        await self.announcer.flush()
        log.info("router stopped")
