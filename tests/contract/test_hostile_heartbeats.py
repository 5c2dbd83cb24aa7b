"""Heartbeats the router refuses, and counts, before they reach its registry or the
ledger: one over MAX_HEARTBEAT_BYTES unread, ones the schema refuses (a NUL, a capacity
no ledger column holds); the node's next good heartbeat is recorded as if they never
came.

A router on the twins alone (MemoryBroker, MemoryNats, MemoryLedger, MemoryKeys)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from cortensor.adapters import memory
from cortensor.adapters.memory import MemoryBroker, MemoryKeys, MemoryLedger, MemoryNats
from cortensor.adapters.memory.ledger import sides
from cortensor.adapters.topology import Topology
from cortensor.schemas import MAX_HEARTBEAT_BYTES, NodeHeartbeat, utcnow
from cortensor.services.router.service import Router
from tests.conftest import eventually, make_settings
from tests.node_keys import public_key_of, signed_by

NODE = "hb-node-1"


@dataclass
class Heard:
    topology: Topology
    nats: MemoryNats
    ledger: MemoryLedger
    keys: MemoryKeys

    async def beat(self, payload: bytes) -> None:
        """Publish `payload` as NODE's heartbeat, signed by it."""
        subject = self.topology.heartbeat_subject(NODE)
        await self.nats.publish_core(subject, payload, headers=signed_by(NODE, payload))

    def refused(self, reason: str) -> int:
        return self.keys.refusals[("router", NODE, reason)]


@pytest.fixture
async def heard() -> AsyncIterator[Heard]:
    settings = make_settings(registry_refresh_s=0.02, sweep_interval_s=0.02)
    topology = Topology(settings.namespace)
    broker, nats, ledger = MemoryBroker(topology), MemoryNats(topology), MemoryLedger()
    keys = MemoryKeys({NODE: public_key_of(NODE)})
    router_ledger, _ = sides(ledger)
    ports, _ = memory.router_ports(router_ledger, broker, nats, topology, keys=keys)
    stop = asyncio.Event()
    running = asyncio.create_task(Router(settings, ports, seed=1).run(stop))
    try:
        yield Heard(topology, nats, ledger, keys)
    finally:
        stop.set()
        await running


def beat(**changes: Any) -> dict[str, Any]:
    good = NodeHeartbeat(
        node_id=NODE,
        hw_class="cpu-int8",
        precision="int8",
        tasks=["embed"],
        models=["all-MiniLM-L6-v2"],
        capacity=4,
        inflight=0,
        processed=0,
        started_at=utcnow(),
    )
    return {**good.model_dump(mode="json"), **changes}


async def test_bad_heartbeats_are_refused_and_the_next_good_one_recorded(heard: Heard) -> None:
    padded = json.dumps(beat()).encode()
    await heard.beat(padded + b" " * (MAX_HEARTBEAT_BYTES + 1 - len(padded)))
    await eventually(lambda: heard.refused("oversized") == 1, what="the oversized one counted")

    await heard.beat(json.dumps(beat(models=["all-MiniLM-L6-v2\x00"])).encode())
    await heard.beat(json.dumps(beat(capacity=2**40)).encode())
    await heard.beat(json.dumps(beat(capacity=3)).encode())
    row = await eventually(lambda: heard.ledger.tables.nodes.get(NODE), what="node recorded")
    assert row.beat.capacity == 3
    await eventually(lambda: heard.refused("malformed") == 2, what="the malformed ones counted")
    assert row.beat.models == ["all-MiniLM-L6-v2"]
