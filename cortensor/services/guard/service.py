"""The guard process: results from JetStream in, verdicts and reputation events out."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from functools import partial
from uuid import UUID

import structlog
from pydantic import ValidationError

from cortensor import metrics
from cortensor.adapters.interfaces import StreamMessage as Msg
from cortensor.adapters.ledger.guard import Intake
from cortensor.adapters.ports import GuardPorts
from cortensor.adapters.topology import Topology
from cortensor.errors import Disposition, backoff_s, disposition
from cortensor.inference.similarity import text_similarity
from cortensor.protocol.comparators import generate
from cortensor.protocol.outages import judging_horizon
from cortensor.schemas import MAX_RESULT_BYTES, InferenceResult, Verdict, printable, utcnow
from cortensor.services.announce import Announcer
from cortensor.services.keyring import Keyring
from cortensor.services.loops import every
from cortensor.services.outages import OutageLog, pause_s
from cortensor.settings import Settings

log = structlog.get_logger(__name__)
_JITTER = random.Random()
"""Spreads the back-offs of guards that failed together."""

REPUBLISH_AFTER_S = 5.0
PURGE_INTERVAL_S = 60.0
"""How often the guard removes content past the retention period (Settings.retention_h):
content outlives it by at most this, and a purge that finds nothing costs one indexed
query."""
PURGE_BATCH = 500
"""Jobs purged per transaction, so that no purge holds many row locks for long."""
BATCHES_IN_HAND = 4
"""Fetched batches taken at once: while one waits for the ledger, another's verdicts
are being stored by JetStream (an fsync each) and the next is fetched. Measured with
one guard, 2,000 signed results at redundancy 1 already in the stream: 562 results/s
taking one batch at a time, the ledger and the verdicts' publication each about half
of the time (ops/bench scale section for the figures now)."""
FETCH_WAIT_S = 1.0
"""How long one fetch waits for a result: also how long a stop may take to be seen."""


class Guard:
    """Stores results; decides each job as soon as its outcome is certain, or at its deadline."""

    def __init__(
        self,
        settings: Settings,
        ports: GuardPorts,
        *,
        name: str = "guard",
        fetch_wait_s: float = FETCH_WAIT_S,
    ) -> None:
        self.settings = settings
        self.name = name
        self.fetch_wait_s = fetch_wait_s
        self.topology = Topology(settings.namespace)
        self.ledger, self.results = ports.ledger, ports.results
        self.ledger.revalidate_deadline_s = settings.revalidate_deadline_s
        self.announcer = Announcer(ports.verdicts, self.topology, self.ledger)
        self.keyring = Keyring(ports.keys, source="guard", refresh_s=settings.registry_refresh_s)
        self.outages = OutageLog(ports.outages, self.ledger, name=name)
        # Answers of two builds to a generate job are weighed by their texts' embeddings.
        generate.use_similarity(partial(text_similarity, settings.models_dir))

    def _parse(self, msg: Msg) -> InferenceResult | None:
        """The result a message holds, or None (logged) for one refused: over
        MAX_RESULT_BYTES (refused unread), not a result the ledger can store (see
        cortensor.schemas), or on a subject that names another node or job."""
        subject = printable(msg.subject, 200)
        if len(msg.data) > MAX_RESULT_BYTES:
            log.warning(
                "oversized result refused unread",
                subject=subject,
                size=len(msg.data),
                limit=MAX_RESULT_BYTES,
            )
            return None
        try:
            result = InferenceResult.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("malformed result refused", subject=subject, error=printable(str(exc), 500))
            return None
        expected = self.topology.results_subject(str(result.job_id), node_id=result.node_id)
        if msg.subject != expected:
            log.warning("result on the wrong subject refused", subject=subject)
            return None
        return result

    def _report(self, job_id: UUID, intake: Intake) -> None:
        """Log and count what became of a job's results."""
        for reason in intake.ignored:
            log.info("result ignored", job_id=str(job_id), reason=reason)
        for node_id in intake.unheld:  # signed, but a replay or a forgery of its own
            self.keyring.refuse(node_id, "not its assignment")
        if intake.escalated:
            log.info("no majority; replicas added", job_id=str(job_id), now=intake.escalated)
        if intake.reopened:
            log.warning(
                "a node failed a check; its unchecked results reopened",
                job_id=str(job_id),
                reopened=intake.reopened,
            )
        v = intake.verdict
        if v is not None and intake.new_verdict:
            decided = [v, *([intake.parent] if intake.parent else [])]
            metrics.verdicts_decided(decided, submitted_at=intake.submitted_at)
            # One line per job would cost more than the decision; only surprises.
            report = log.debug if v.status == "verified" else log.warning
            report("job decided", job_id=str(job_id), status=v.status, reason=v.reason)

    @staticmethod
    def _verdicts(intake: Intake) -> list[Verdict]:
        """The verdicts to publish after a job's results were taken."""
        if intake.verdict is None:
            return []
        return [intake.verdict, *([intake.parent] if intake.parent else [])]

    async def _take_jobs(self, by_job: dict[UUID, list[tuple[Msg, InferenceResult]]]) -> None:
        """Take the results of several jobs in one transaction, publish the verdicts,
        then ack; should anything fail, each job is taken alone (`_take_job`), so that a
        job at fault never drags the others along."""
        try:
            intakes = await self.ledger.take_many(
                {job_id: [r for _, r in batch] for job_id, batch in by_job.items()}
            )
            for job_id, intake in intakes.items():
                self._report(job_id, intake)
            await self.announcer.publish([v for i in intakes.values() for v in self._verdicts(i)])
        except Exception as exc:
            # Taking a job again after its commit changes nothing but publishes its
            # verdict again; each job then meets its own failure's disposition.
            log.warning(
                "results of several jobs not stored together; taking each job alone",
                jobs=len(by_job),
                error=printable(repr(exc), 300),
            )
            await asyncio.gather(*(self._take_job(j, b) for j, b in by_job.items()))
            return
        await asyncio.gather(*(m.ack() for batch in by_job.values() for m, _ in batch))

    async def _take_job(self, job_id: UUID, batch: list[tuple[Msg, InferenceResult]]) -> None:
        with structlog.contextvars.bound_contextvars(job_id=str(job_id)):
            await self._take_one(job_id, batch)

    async def _take_one(self, job_id: UUID, batch: list[tuple[Msg, InferenceResult]]) -> None:
        try:
            intake = await self.ledger.take_results(job_id, [r for _, r in batch])
            self._report(job_id, intake)
            await self.announcer.publish(self._verdicts(intake))
        except Exception as exc:
            if len(batch) > 1:
                # One result may be at fault (a value the ledger refuses): each is taken
                # alone, so that only the one at fault meets the failure's disposition.
                log.warning(
                    "results not stored together; taking them one at a time",
                    job_id=str(job_id),
                    results=len(batch),
                    error=printable(repr(exc), 300),
                )
                for item in batch:
                    await self._take_job(job_id, [item])
                return
            # cortensor.errors.DISPOSITION decides: a failure that may pass has JetStream
            # deliver the results again after a back-off; one that cannot stops their
            # delivery (JetStream keeps no dead letters: the log says why).
            action = disposition(exc)
            log.exception("results not stored", job_id=str(job_id), action=str(action))
            if action is Disposition.REQUEUE:
                s = self.settings
                wait = backoff_s(1, base_s=s.retry_base_s, cap_s=s.retry_cap_s, rng=_JITTER)
                await asyncio.gather(*(m.nak(delay=wait) for m, _ in batch))
            else:
                await asyncio.gather(*(m.term() for m, _ in batch))
            return
        await asyncio.gather(*(m.ack() for m, _ in batch))

    async def _signed(self, msgs: list[Msg]) -> list[Msg]:
        """The messages signed by the key bound to the node their subject names; the
        others are termed unread and counted: they reach neither the ledger nor anyone's
        reputation (not even the node they claim to come from). When the keys cannot be
        read (the ledger is down before they were ever loaded), every message is delivered
        again after a back-off, none refused."""
        try:
            signed = [
                await self.keyring.check(
                    self.topology.node_of_result(msg.subject), msg.data, msg.headers
                )
                for msg in msgs
            ]
        except Exception:
            log.exception("node keys unavailable; results delivered again later")
            s = self.settings
            wait = backoff_s(1, base_s=s.retry_base_s, cap_s=s.retry_cap_s, rng=_JITTER)
            await asyncio.gather(*(m.nak(delay=wait) for m in msgs))
            return []
        await asyncio.gather(*(m.term() for m, ok in zip(msgs, signed, strict=True) if not ok))
        return [m for m, ok in zip(msgs, signed, strict=True) if ok]

    async def take(self, msgs: list[Msg]) -> None:
        """Handle a batch of result messages: one transaction per job, ack after commit.
        Only signed results are read (`_signed`), and only those on their own node's and
        job's subject are taken (`_parse`): a signed result replayed on another job's
        subject is refused like an unsigned one."""
        by_job: dict[UUID, list[tuple[Msg, InferenceResult]]] = defaultdict(list)
        junk = []
        for msg in await self._signed(msgs):
            result = self._parse(msg)
            if result is None:
                self.keyring.refuse(self.topology.node_of_result(msg.subject) or "", "unreadable")
                junk.append(msg.term())
            else:
                by_job[result.job_id].append((msg, result))
        if len(by_job) > 1:
            await asyncio.gather(*junk, self._take_jobs(by_job))
        else:
            await asyncio.gather(*junk, *(self._take_job(j, b) for j, b in by_job.items()))

    async def sweep(self) -> None:
        """Record the outages seen, so that they excuse the nodes they kept from answering
        (cortensor.protocol.outages); give jobs whose deadline fell in one their extra
        time; decide jobs past their deadline, but none whose result may still wait in
        the stream (`judging_horizon`: read before deciding, and a result is acked only
        once committed, so what was taken by then is in the ledger); publish verdicts
        whose publisher died."""
        await self.outages.flush()
        horizon = judging_horizon(await self.results.oldest_untaken(), utcnow())
        await self.ledger.extend_deadlines()
        decided = await self.ledger.decide_expired(horizon=horizon)
        metrics.timeouts_charged(await self.ledger.expire_stragglers(horizon=horizon))
        metrics.verdicts_decided(decided)
        for v in decided:
            log.info(
                "job decided at deadline", job_id=str(v.job_id), status=v.status, reason=v.reason
            )
        await self.announcer.publish(decided)
        await self.announcer.republish_stale(REPUBLISH_AFTER_S)
        await self.keyring.flush()

    async def purge(self) -> None:
        """Remove the inputs and outputs of jobs decided longer ago than the retention
        period, a batch per transaction until none is due; their sha256 stays."""
        retention_s = self.settings.retention_h * 3600.0
        purged, batch = 0, PURGE_BATCH
        while batch == PURGE_BATCH:
            batch = await self.ledger.purge_content(retention_s, PURGE_BATCH)
            purged += batch
        if purged:
            log.info("content past retention removed", jobs=purged)

    @contextlib.asynccontextmanager
    async def _kept(self, msgs: Sequence[Msg]) -> AsyncIterator[None]:
        """Keep messages in hand while they are taken: their ack wait starts again every
        third of it, so that a slow ledger does not have them delivered to another
        guard meanwhile (the ack wait is short so that the results a guard held when it
        died come back soon)."""
        every_s = self.topology.guard_consumer.ack_wait_s / 3

        async def renew() -> None:
            while True:
                await asyncio.sleep(every_s)
                await asyncio.gather(*(m.in_progress() for m in msgs), return_exceptions=True)

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _take_kept(self, msgs: list[Msg]) -> None:
        """Take a fetched batch, kept in hand meanwhile (`_kept`). What fails here is
        logged; its messages, not acked, are delivered again."""
        try:
            async with self._kept(msgs):
                await self.take(msgs)
        except Exception as exc:
            if self.outages.failed(exc) is None:
                log.exception("results not taken; delivered again after their ack wait")

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; the adapters stay open (whoever gave them closes them)."""
        s = self.settings
        failed = self.outages.failed
        sweeper = asyncio.create_task(every(s.sweep_interval_s, self.sweep, stop, on_error=failed))
        purger = asyncio.create_task(every(PURGE_INTERVAL_S, self.purge, stop, on_error=failed))
        log.info("guard ready", consumer=self.topology.guard_consumer.durable)
        trouble = 0
        in_hand: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                try:
                    if len(in_hand) >= BATCHES_IN_HAND:
                        await asyncio.wait(in_hand, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    msgs = await self.results.fetch(s.guard_batch + 1, self.fetch_wait_s)
                    if msgs:
                        taking = asyncio.create_task(self._take_kept(msgs))
                        in_hand.add(taking)
                        taking.add_done_callback(in_hand.discard)
                    trouble = 0
                except Exception as exc:
                    # NATS lost under us: the consumer is durable and what was not acked
                    # is delivered again, so the guard waits and fetches again.
                    trouble += 1
                    if failed(exc) is None:
                        log.exception("results not fetched; fetching again")
                    await asyncio.sleep(pause_s(trouble))
        except asyncio.CancelledError:  # cancelled, not stopped: its work goes with it
            for task in (sweeper, purger, *in_hand):
                task.cancel()
            raise
        await asyncio.gather(sweeper, purger, *in_hand)
        await self.announcer.flush()
        await self.results.close()
        log.info("guard stopped")
