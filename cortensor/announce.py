"""Publishing verdicts: to the verdicts stream first, then marked as published in the ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from nats.js import JetStreamContext

from cortensor.ledger.store import Ledger
from cortensor.schemas import Verdict
from cortensor.topology import Topology
from cortensor.transport import jetstream


async def publish_verdicts(
    js: JetStreamContext, topology: Topology, ledger: Ledger, verdicts: Sequence[Verdict]
) -> None:
    """Publish verdicts (deduplicated by job id) and record that they went out.

    A verdict committed but never published (its publisher died in between) is found
    by `Ledger.unpublished_verdicts` and published again; the stream drops the copy
    if the first publish did arrive.
    """
    if not verdicts:
        return
    await asyncio.gather(
        *(
            jetstream.publish(
                js,
                topology.verdicts_subject(str(v.job_id)),
                v.model_dump_json().encode(),
                msg_id=f"verdict-{v.job_id}",
            )
            for v in verdicts
        )
    )
    await ledger.mark_published([v.job_id for v in verdicts])
