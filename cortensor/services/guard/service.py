"""The guard process: results from JetStream in, verdicts and reputation events out."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from uuid import UUID

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from pydantic import ValidationError

from cortensor.adapters import jetstream
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.topology import Topology
from cortensor.protocol.adjudication import judge
from cortensor.schemas import InferenceResult
from cortensor.services.announce import Announcer
from cortensor.services.loops import every
from cortensor.settings import Settings

log = structlog.get_logger(__name__)

REPUBLISH_AFTER_S = 5.0


class Guard:
    """Stores results; decides each job as soon as its outcome is certain, or at its deadline."""

    def __init__(self, settings: Settings, *, name: str = "guard") -> None:
        self.settings = settings
        self.name = name
        self.topology = Topology(settings.namespace)

    def _parse(self, msg: Msg) -> InferenceResult | None:
        try:
            result = InferenceResult.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("malformed result ignored", subject=msg.subject, error=str(exc)[:500])
            return None
        if msg.subject != self.topology.results_subject(str(result.job_id)):
            log.warning("result on the wrong subject ignored", subject=msg.subject)
            return None
        return result

    async def _take_job(self, job_id: UUID, batch: list[tuple[Msg, InferenceResult]]) -> None:
        try:
            intake = await self.ledger.take_results(job_id, [r for _, r in batch], judge)
            for reason in intake.ignored:
                log.info("result ignored", job_id=str(job_id), reason=reason)
            if intake.escalated:
                log.info("no majority; replicas added", job_id=str(job_id), now=intake.escalated)
            if intake.reopened:
                log.warning(
                    "a node failed a check; its unchecked results reopened",
                    job_id=str(job_id),
                    reopened=intake.reopened,
                )
            if intake.verdict is not None:
                await self.announcer.publish(
                    [intake.verdict, *([intake.parent] if intake.parent else [])]
                )
                if intake.new_verdict:
                    v = intake.verdict
                    # One line per job would cost more than the decision; only surprises.
                    report = log.debug if v.status == "verified" else log.warning
                    report("job decided", job_id=str(job_id), status=v.status, reason=v.reason)
        except Exception:
            log.exception("results not stored; redelivery requested", job_id=str(job_id))
            await asyncio.gather(*(m.nak(delay=1.0) for m, _ in batch))
            return
        await asyncio.gather(*(m.ack() for m, _ in batch))

    async def take(self, msgs: list[Msg]) -> None:
        """Handle a batch of result messages: one transaction per job, ack after commit."""
        by_job: dict[UUID, list[tuple[Msg, InferenceResult]]] = defaultdict(list)
        junk = []
        for msg in msgs:
            result = self._parse(msg)
            if result is None:
                junk.append(msg.term())
            else:
                by_job[result.job_id].append((msg, result))
        await asyncio.gather(*junk, *(self._take_job(j, b) for j, b in by_job.items()))

    async def sweep(self) -> None:
        """Decide jobs past their deadline; publish verdicts whose publisher died."""
        decided = await self.ledger.decide_expired(judge)
        await self.ledger.expire_stragglers()
        for v in decided:
            log.info(
                "job decided at deadline", job_id=str(v.job_id), status=v.status, reason=v.reason
            )
        await self.announcer.publish(decided)
        await self.announcer.republish_stale(REPUBLISH_AFTER_S)

    async def _fetch(self, psub: JetStreamContext.PullSubscription) -> list[Msg]:
        # Long-poll for one message, then take what is already pending without waiting:
        # a fetch of many on an idle consumer would wait for the whole batch.
        try:
            msgs = await psub.fetch(1, timeout=1.0)
        except NatsTimeout:
            return []
        pending = msgs[-1].metadata.num_pending or 0
        if pending:
            with contextlib.suppress(NatsTimeout):
                msgs += await psub.fetch(min(pending, self.settings.guard_batch), timeout=1.0)
        return msgs

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set."""
        s = self.settings
        self.ledger = await GuardLedger.connect(s.asyncpg_dsn, max_size=8)
        self.ledger.revalidate_deadline_s = s.revalidate_deadline_s
        nc = await jetstream.connect(s.nats_url, name=self.name)
        js = nc.jetstream()
        self.announcer = Announcer(js, self.topology, self.ledger)
        consumer = self.topology.guard_consumer
        psub = await js.pull_subscribe_bind(durable=consumer.durable, stream=consumer.stream)
        sweeper = asyncio.create_task(every(s.sweep_interval_s, self.sweep, stop))
        log.info("guard ready", consumer=consumer.durable)
        while not stop.is_set():
            msgs = await self._fetch(psub)
            if msgs:
                await self.take(msgs)
        await sweeper
        await self.announcer.flush()
        await psub.unsubscribe()
        await nc.drain()
        await self.ledger.close()
        log.info("guard stopped")
