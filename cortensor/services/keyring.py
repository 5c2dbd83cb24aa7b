"""Checking that a node's message is signed by the key its node id means, for the router
(heartbeats) and the guard (results), before anything from it reaches the ledger.

The keys are read from the ledger into a cache, refreshed every `refresh_s`; a node id
that is not in the cache triggers a reload (a node whose credentials were just issued),
but at most one a second, so that a flood of messages under junk ids cannot hammer the
ledger. What is refused is counted per (publisher, reason) and written in one statement
by `flush`, which the services call once per batch or refresh.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from cortensor.adapters.ledger.interfaces import KeyBook
from cortensor.protocol.signing import refusal

log = structlog.get_logger(__name__)

MISS_RELOAD_S = 1.0
"""Least time between two reloads caused by an unknown node id."""
MAX_REFUSERS = 1000
"""Most (publisher, reason) pairs counted between two flushes; past it, refusals are
counted under MANY, so that a flood of junk ids (or a ledger down for long) cannot grow
the counter without bound."""
MANY = "*"
"""The publisher that refusals past MAX_REFUSERS are counted under (never a node id)."""


class Keyring:
    """The bound keys of the fleet, cached, and the refusals not yet counted."""

    def __init__(
        self,
        book: KeyBook,
        *,
        source: str,
        refresh_s: float,
        miss_reload_s: float = MISS_RELOAD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book, self.source = book, source
        self.refresh_s, self.miss_reload_s, self.clock = refresh_s, miss_reload_s, clock
        self._keys: dict[str, bytes] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()
        self._refused: Counter[tuple[str, str]] = Counter()

    async def _reload(self, older_than_s: float) -> None:
        async with self._lock:  # concurrent misses wait for one reload, not one each
            now = self.clock()
            if self._loaded_at is not None and now - self._loaded_at < older_than_s:
                return
            try:
                keys = await self.book.bound_keys()
            except Exception:
                if self._loaded_at is None:
                    raise  # nothing to check with: the caller retries its messages later
                log.warning("node keys not reloaded; the cached ones still apply", exc_info=True)
                self._loaded_at = now  # tried again after the interval, not per message
                return
            self._keys, self._loaded_at = keys, now

    async def key(self, node_id: str) -> bytes | None:
        """The key bound to `node_id` (None: none, as of the latest allowed reload)."""
        await self._reload(self.refresh_s)
        if node_id not in self._keys:
            await self._reload(self.miss_reload_s)
        return self._keys.get(node_id)

    async def check(
        self, node_id: str | None, payload: bytes, headers: Mapping[str, Any] | None
    ) -> bool:
        """Whether `payload` is signed by `node_id`'s bound key (the node id comes from
        the subject, which NATS permissions tie to the publisher); a refusal is logged
        and counted."""
        if node_id is None:
            self.refuse("", "not a node's subject")
            return False
        reason = refusal(await self.key(node_id), payload, headers)
        if reason is not None:
            self.refuse(node_id, reason)
            return False
        return True

    def refuse(self, publisher: str, reason: str) -> None:
        """Count a refused message of `publisher` (the subject's node id, '' for none)."""
        log.debug("message refused", source=self.source, publisher=publisher, reason=reason)
        self._count(publisher, reason, 1)

    def _count(self, publisher: str, reason: str, n: int) -> None:
        key = (publisher, reason)
        if key not in self._refused and len(self._refused) >= MAX_REFUSERS:
            key = (MANY, reason)
        self._refused[key] += n

    def __len__(self) -> int:
        """(publisher, reason) pairs counted and not yet written."""
        return len(self._refused)

    async def flush(self) -> None:
        """Write the refusals counted since the last flush (kept for the next one when the
        ledger fails)."""
        if not self._refused:
            return
        counts, self._refused = self._refused, Counter()
        log.warning(
            "messages refused",
            source=self.source,
            counts={f"{p or '-'}: {r}": n for (p, r), n in counts.items()},
        )
        try:
            await self.book.count_refusals(self.source, counts)
        except Exception:
            for (publisher, reason), n in counts.items():
                self._count(publisher, reason, n)
            raise
