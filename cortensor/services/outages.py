"""A router's or guard's record of its servers' outages (cortensor.protocol.outages).

The connections report what they see (aio-pika's and nats-py's callbacks, wired in
cortensor.adapters.live); failed calls report the rest, PostgreSQL's outages above all,
which no callback announces. What was seen goes to the ledger at the start of each
sweep, before anything is decided on deadlines: the ledger then excuses the assignments
the outages overlapped.
"""

from __future__ import annotations

import os
import random
import socket

import structlog

from cortensor.adapters.ledger.interfaces import OutageBook
from cortensor.adapters.servers import server_of
from cortensor.protocol.outages import OutageWatch

log = structlog.get_logger(__name__)
_JITTER = random.Random()

PATIENCE_S = 120.0
"""How long a batch of work is held, retried in hand, while a server it needs is down,
before it is handed back to its broker like any other failure."""
RETRY_CAP_S = 2.0
"""Longest wait between two tries while a server is down: a 15 s outage costs at most
this much more once the server is back."""


def pause_s(attempt: int) -> float:
    """The wait before try `attempt` + 1 while a server is down: 0.1 s doubling to
    RETRY_CAP_S, the upper half at random so that processes that failed together do
    not retry together."""
    ceiling = min(RETRY_CAP_S, 0.1 * 2.0 ** min(attempt - 1, 30))
    return ceiling / 2 + _JITTER.uniform(0.0, ceiling / 2)


class OutageLog:
    """What one process saw of its servers, written to the ledger when it is reachable."""

    def __init__(self, watch: OutageWatch, ledger: OutageBook, *, name: str) -> None:
        self.watch, self.ledger = watch, ledger
        self.seen_by = f"{name}@{socket.gethostname()}:{os.getpid()}"
        """The observer, as the ledger names it: one row per process and window."""

    def failed(self, exc: BaseException) -> str | None:
        """The server whose lost connection `exc` shows, if any. A PostgreSQL outage is
        noted here, where failed calls are its only sign (`flush` ends it). RabbitMQ's
        and NATS's are their connections' to note, lost and regained: a call on a
        channel that died with the connection may still fail after it came back, and
        would start an outage that nothing ends."""
        server = server_of(exc)
        if server == "postgres":
            if server not in self.watch.down:
                log.warning("server unreachable", server=server, error=repr(exc)[:300])
            self.watch.lost(server)
        return server

    async def flush(self) -> bool:
        """Write what the ledger was not told yet. Reaching the ledger ends its own
        outage (a write that fails keeps it going). True when
        this ended an outage of PostgreSQL (its connections are new); the window it
        ended is written closed at the next flush."""
        pending = self.watch.pending()
        if not pending:
            return False
        try:
            await self.ledger.record_outages(self.seen_by, pending)
        except Exception as exc:
            self.failed(exc)
            raise
        self.watch.recorded(pending)
        back = self.watch.restored("postgres")
        if back is not None:
            log.warning("server reachable again", server="postgres", down_since=back.started_at)
        return back is not None
