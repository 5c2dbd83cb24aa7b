"""Publishing verdicts: to the verdicts stream first, then marked as published in the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from uuid import UUID

import structlog

from cortensor.adapters.interfaces import StreamPublisher
from cortensor.adapters.ledger.interfaces import VerdictBook
from cortensor.adapters.topology import Topology
from cortensor.schemas import JobReceipt, Verdict, printable, utcnow

log = structlog.get_logger(__name__)


RECEIPT_DELAY_S = 1.0
"""How long after a job is recorded its receipt goes out, unless its verdict went out
first: a job decided within it (most are, in milliseconds) needs no receipt, for its
verdict says more, and its receipt would be one more fsynced write to the verdicts
stream per job."""


class Announcer:
    """Publishes verdicts (deduplicated by job id) and records, in batches, that they went out.

    A verdict committed but never published (its publisher died in between) is found
    by `Ledger.unpublished_verdicts` and published again; the stream drops the copy
    if the first publish did arrive. Marking is batched off the hot path: a crash
    before `flush` only means a harmless second publish.
    """

    def __init__(self, stream: StreamPublisher, topology: Topology, ledger: VerdictBook) -> None:
        self.stream, self.topology, self.ledger = stream, topology, ledger
        self._published: list[UUID] = []
        self._waiting: deque[tuple[float, UUID, str]] = deque()
        """Receipts to publish: when each falls due, the job, its owner."""
        self._sender: asyncio.Task[None] | None = None

    async def publish(self, verdicts: Sequence[Verdict]) -> None:
        """Publish verdicts and wait for the stream's acks."""
        if not verdicts:
            return
        await asyncio.gather(
            *(
                self.stream.publish(
                    self.topology.verdict_subject(v),
                    v.model_dump_json().encode(),
                    # Each revision is a message of its own; a copy of one is dropped.
                    msg_id=f"verdict-{v.job_id}" + (f"-r{v.revision}" if v.revision else ""),
                )
                for v in verdicts
            )
        )
        self._published.extend(v.job_id for v in verdicts)

    async def receipts(self, jobs: Sequence[tuple[UUID, str]]) -> None:
        """Publish the receipts of jobs (id, owner) that are in the ledger, so that their
        owners can tell a pending job from one the network never saw; deduplicated by
        job id, and published again when a job is delivered again.

        A receipt is a courtesy, not a step of the job: one that cannot be published
        (NATS away, the stream full) is logged and the job goes on; its verdict, which
        the ledger keeps until it is published, tells the owner in the end."""
        if not jobs:
            return
        now = utcnow()
        sent = await asyncio.gather(
            *(
                self.stream.publish(
                    self.topology.receipt_subject(str(job_id), owner=owner),
                    JobReceipt(job_id=job_id, owner=owner, created_at=now)
                    .model_dump_json()
                    .encode(),
                    msg_id=f"accepted-{job_id}",
                )
                for job_id, owner in jobs
            ),
            return_exceptions=True,
        )
        failed = [r for r in sent if isinstance(r, Exception)]
        if failed:
            log.warning(
                "job receipts not published", jobs=len(failed), error=printable(repr(failed[0]))
            )

    async def receipts_soon(self, jobs: Sequence[tuple[UUID, str]]) -> None:
        """Publish the receipts of jobs just recorded RECEIPT_DELAY_S from now, for those
        still undecided then, without holding up the caller (the router acks its jobs
        meanwhile)."""
        due = time.monotonic() + RECEIPT_DELAY_S
        self._waiting.extend((due, job_id, owner) for job_id, owner in jobs)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_receipts())

    async def _send_receipts(self) -> None:
        """Publish the receipts as they fall due, until none waits."""
        while self._waiting:
            await asyncio.sleep(max(0.0, self._waiting[0][0] - time.monotonic()))
            now, due = time.monotonic(), []
            while self._waiting and self._waiting[0][0] <= now:
                _, job_id, owner = self._waiting.popleft()
                due.append((job_id, owner))
            await self._still_open(due)

    async def _still_open(self, jobs: Sequence[tuple[UUID, str]]) -> None:
        """Publish the receipts of those of `jobs` still undecided (of all of them when
        the ledger cannot say: a receipt too many is harmless)."""
        try:
            undecided = await self.ledger.undecided([job_id for job_id, _ in jobs])
        except Exception as exc:
            log.warning("job receipts sent unfiltered", error=printable(repr(exc)))
            undecided = {job_id for job_id, _ in jobs}
        await self.receipts([(j, owner) for j, owner in jobs if j in undecided])

    async def receipts_sent(self) -> None:
        """Publish the receipts still waiting now, and wait for them."""
        waiting, self._waiting = list(self._waiting), deque()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        await self._still_open([(job_id, owner) for _, job_id, owner in waiting])

    async def flush(self) -> None:
        """Record in the ledger which verdicts went out since the last flush."""
        done, self._published = self._published, []
        try:
            await self.ledger.mark_published(done)
        except BaseException:
            self._published.extend(done)
            raise

    async def republish_stale(self, older_than_s: float) -> None:
        """Publish again the verdicts whose publication was never recorded."""
        await self.flush()
        await self.publish(await self.ledger.unpublished_verdicts(older_than_s))
