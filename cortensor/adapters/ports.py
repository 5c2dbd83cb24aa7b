"""What each service is given to talk to the world: its ledger and its broker sides.

The live ones come from `cortensor.adapters.live`; tests give in-memory twins of the
brokers and of the ledger (`cortensor.adapters.memory`). A service never builds its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cortensor.adapters.interfaces import (
    DeadLetterQueue,
    JobQueue,
    ResultsBacklog,
    SignalBus,
    StreamConsumer,
    StreamPublisher,
    TaskPublisher,
)
from cortensor.adapters.ledger.interfaces import GuardBook, KeyBook, RouterBook
from cortensor.protocol.outages import OutageWatch
from cortensor.schemas import utcnow


def _watch() -> OutageWatch:
    return OutageWatch(utcnow)


@dataclass(frozen=True, slots=True)
class RouterPorts:
    """A router's adapters: jobs in, assignments out, heartbeats in, verdicts out; the
    node keys that heartbeats are checked with; the dead-letter queue, whose readable
    jobs it ends (None: this router leaves them to others); what the guards have not
    taken of the results (None: the router judges deadlines without waiting for them,
    as where no guard runs)."""

    ledger: RouterBook
    keys: KeyBook
    jobs: JobQueue
    tasks: TaskPublisher
    signals: SignalBus
    verdicts: StreamPublisher
    outages: OutageWatch = field(default_factory=_watch)
    """Where the connections report losing and regaining their servers."""
    dead: DeadLetterQueue | None = None
    results: ResultsBacklog | None = None


@dataclass(frozen=True, slots=True)
class GuardPorts:
    """A guard's adapters: results in, verdicts out; the node keys that results are
    checked with."""

    ledger: GuardBook
    keys: KeyBook
    results: StreamConsumer
    verdicts: StreamPublisher
    outages: OutageWatch = field(default_factory=_watch)
    """Where the connections report losing and regaining their servers."""
