"""Twin of cortensor.adapters.ledger.keys: node keys and refusal counts in memory."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from cortensor.adapters.ledger.keys import KeyConflict


class MemoryKeys:
    """A `KeyBook` in memory, with the bindings' rules of the ledger (first binding wins
    until revoked)."""

    def __init__(self, keys: Mapping[str, bytes] | None = None) -> None:
        self.keys: dict[str, bytes] = dict(keys or {})
        self.revoked: dict[str, bytes] = {}
        self.refusals: Counter[tuple[str, str, str]] = Counter()
        """(source, publisher, reason) -> count."""
        self.loads = 0
        """How often the keys were read: a cache's reloads show here."""

    def bind(self, node_id: str, public_key: bytes) -> bool:
        """As `keys.bind_key`: True when written, False when already this key."""
        bound = self.keys.get(node_id)
        if bound == public_key:
            return False
        if bound is not None:
            raise KeyConflict(f"node id {node_id!r} is bound to another key; revoke it first")
        self.keys[node_id] = public_key
        self.revoked.pop(node_id, None)
        return True

    def revoke(self, node_id: str) -> bool:
        """As `keys.revoke_key`."""
        key = self.keys.pop(node_id, None)
        if key is None:
            return False
        self.revoked[node_id] = key
        return True

    async def bound_keys(self) -> dict[str, bytes]:
        """Every node id's unrevoked key."""
        self.loads += 1
        return dict(self.keys)

    async def count_refusals(self, source: str, counts: Mapping[tuple[str, str], int]) -> None:
        """Add to the refusal counts."""
        for (publisher, reason), n in counts.items():
            self.refusals[(source, publisher, reason)] += n
