"""In-memory twins of the broker adapters and of the ledger, for tests that run in
milliseconds.

Each twin implements the same interface as its real adapter (cortensor.adapters
.interfaces, cortensor.adapters.ledger.interfaces) with the semantics the services rely
on; tests/contract/ runs one suite against both. `MemoryBroker` and `MemoryNats` play
the servers, `MemoryLedger` the ledger; the port builders below give a service its
adapters on them.
"""

from __future__ import annotations

from cortensor.adapters.ledger.interfaces import GuardBook, KeyBook, RouterBook
from cortensor.adapters.memory.keys import MemoryKeys
from cortensor.adapters.memory.ledger import MemoryLedger
from cortensor.adapters.memory.queues import (
    MemoryBroker,
    MemoryChannel,
    MemoryDeadLetters,
    MemoryDelivery,
    MemoryTaskPublisher,
    MemoryWorkQueue,
)
from cortensor.adapters.memory.streams import (
    MemoryNats,
    MemoryPullConsumer,
    MemorySignals,
    MemoryStreamPublisher,
    NoStream,
    subject_matches,
)
from cortensor.adapters.memory.tables import ManualClock
from cortensor.adapters.ports import GuardPorts, RouterPorts
from cortensor.adapters.topology import Topology

__all__ = [
    "ManualClock",
    "MemoryBroker",
    "MemoryChannel",
    "MemoryDeadLetters",
    "MemoryDelivery",
    "MemoryKeys",
    "MemoryLedger",
    "MemoryNats",
    "MemoryPullConsumer",
    "MemorySignals",
    "MemoryStreamPublisher",
    "MemoryTaskPublisher",
    "MemoryWorkQueue",
    "NoStream",
    "guard_ports",
    "router_ports",
    "subject_matches",
]


def router_ports(
    ledger: RouterBook,
    broker: MemoryBroker,
    nats: MemoryNats,
    topology: Topology,
    *,
    keys: KeyBook,
    prefetch: int = 0,
    dead_letters: bool = False,
) -> tuple[RouterPorts, MemoryChannel]:
    """A router's ports on the twins, and its channel (close it to play a crash); with
    `dead_letters`, the router reads the dead-letter queue too."""
    channel = broker.channel(prefetch)
    ports = RouterPorts(
        ledger=ledger,
        keys=keys,
        jobs=MemoryWorkQueue(channel, topology),
        tasks=MemoryTaskPublisher(broker, topology),
        signals=MemorySignals(nats),
        verdicts=MemoryStreamPublisher(nats),
        dead=MemoryDeadLetters(channel, topology) if dead_letters else None,
        results=MemoryPullConsumer(nats, topology.guard_consumer.durable),
    )
    return ports, channel


def guard_ports(
    ledger: GuardBook, nats: MemoryNats, topology: Topology, *, keys: KeyBook
) -> GuardPorts:
    """A guard's ports on the twins: a fetcher on the topology's guard consumer."""
    return GuardPorts(
        ledger=ledger,
        keys=keys,
        results=MemoryPullConsumer(nats, topology.guard_consumer.durable),
        verdicts=MemoryStreamPublisher(nats),
    )
