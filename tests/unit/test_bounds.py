"""Nothing in the router or the guard grows with the node ids ever seen (docs/design.md,
Overload): the router's registry holds the nodes heard lately, the keyring's refusal
counter a bounded number of (publisher, reason) pairs, and a flood of junk ids costs
the ledger at most one key reload a second."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from cortensor.adapters.ledger.router import NodeStats
from cortensor.services.keyring import MANY, MAX_REFUSERS, Keyring
from cortensor.services.router.registry import FORGET_AFTER_S, NodeRegistry
from tests.unit.test_registry import beat

IDS = 100_000


class Book:
    """A KeyBook with no bound keys whose writes may fail (a ledger that is down)."""

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.reloads = 0
        self.written: dict[tuple[str, str], int] = {}

    async def bound_keys(self) -> dict[str, bytes]:
        self.reloads += 1
        return {}

    async def count_refusals(self, source: str, counts: Mapping[tuple[str, str], int]) -> None:
        if self.down:
            raise ConnectionError("ledger down")
        for key, n in counts.items():
            self.written[key] = self.written.get(key, 0) + n


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_junk_ids_keep_the_refusal_counter_bounded_while_the_ledger_is_down() -> None:
    book, clock = Book(down=True), Clock()
    keyring = Keyring(book, source="guard", refresh_s=1.0, clock=clock)  # type: ignore[arg-type]
    for i in range(IDS):
        clock.now = i / 1000  # 100,000 messages over 100 s
        assert not await keyring.check(f"junk-{i}", b"{}", {})
        if i % 10_000 == 0:
            with pytest.raises(ConnectionError):
                await keyring.flush()  # a failed flush keeps the counts, bounded
    assert len(keyring) <= MAX_REFUSERS + 1  # + the MANY pair of the one reason
    # At most one reload a second for unknown ids, however many there are.
    assert book.reloads <= 100 + 2
    book.down = False
    await keyring.flush()
    assert sum(book.written.values()) == IDS  # every refusal counted, none lost
    assert book.written[(MANY, "unknown node")] == IDS - MAX_REFUSERS
    assert len(keyring) == 0


def test_the_registry_holds_the_nodes_heard_lately_not_every_id_ever_seen() -> None:
    registry = NodeRegistry()
    peak = 0
    for i in range(IDS):
        now = i * 0.1  # a new id every 100 ms: 10,000 s in all
        registry.observe(beat(f"n{i}"), now)
        registry.recorded(f"n{i}")
        if i % 1_000 == 0:
            registry.prune(now)
            registry.update_stats({f"n{j}": NodeStats(0.9, 0) for j in range(i - 50, i + 1)})
            registry.assigned(f"n{i}")
            peak = max(peak, len(registry))
    assert peak <= FORGET_AFTER_S / 0.1 + 1_000 + 1
    registry.prune(IDS * 0.1)
    assert len(registry) <= FORGET_AFTER_S / 0.1 + 1
    assert len(registry._stats) <= 51
    assert len(registry._assigned_since_refresh) <= 1


def test_a_forgotten_node_that_comes_back_is_recorded_again() -> None:
    registry = NodeRegistry(forget_after_s=10.0)
    assert registry.observe(beat("n1"), 0.0)
    registry.recorded("n1")
    assert not registry.observe(beat("n1"), 5.0)
    assert registry.prune(20.0) == ["n1"]
    assert [v.node_id for v in registry.views()] == []
    assert registry.observe(beat("n1"), 21.0)  # the ledger records it again
