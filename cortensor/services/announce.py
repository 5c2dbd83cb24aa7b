"""Publishing verdicts: to the verdicts stream first, then marked as published in the ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID

from cortensor.adapters.interfaces import StreamPublisher
from cortensor.adapters.ledger.interfaces import VerdictBook
from cortensor.adapters.topology import Topology
from cortensor.schemas import Verdict


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
