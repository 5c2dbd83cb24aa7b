"""Node identities in the ledger: the Ed25519 public key each node id means, and the
count of messages refused before they reached the ledger.

A node id is bound to a key when its credentials are issued (`bind_key`); from then on
only that key's signatures speak for the id. The first binding wins: binding another
key to an id whose key is not revoked is refused, so that nobody can take over a
registered id by registering it again. After `revoke_key` the id may be bound anew
(a node that lost its key gets a new one, and its history stays its own).

Routers and guards read the unrevoked keys (`NodeKeys.bound_keys`) into a cache
(cortensor.services.keyring) and count what they refuse (`NodeKeys.count_refusals`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import asyncpg

from cortensor.errors import BadInput
from cortensor.protocol.signing import PUBLIC_KEY_BYTES

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool
"""Where a statement runs: a pool (its own transaction) or a connection (the caller's)."""


class KeyConflict(BadInput):
    """The node id is bound to another unrevoked key; revoke it first."""


def _checked(public_key: bytes) -> bytes:
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise BadInput(
            f"an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes, not {len(public_key)}"
        )
    return bytes(public_key)


async def bind_key(db: Executor, node_id: str, public_key: bytes) -> bool:
    """Bind `public_key` (32 raw bytes) to `node_id`.

    Returns True when the binding was written, False when the id already means this
    very key (issuing the same credentials again changes nothing). Raises `KeyConflict`
    when the id is bound to another key that is not revoked; a revoked id is bound anew.
    """
    key = _checked(public_key)
    bound = await db.fetchrow(
        """
        WITH bound AS (
            INSERT INTO node_keys (node_id, public_key) VALUES ($1, $2)
            ON CONFLICT (node_id) DO UPDATE
                SET public_key = EXCLUDED.public_key, bound_at = now(), revoked_at = NULL
                WHERE node_keys.revoked_at IS NOT NULL
            RETURNING 1
        )
        SELECT EXISTS (SELECT 1 FROM bound) AS written,
               (SELECT public_key FROM node_keys WHERE node_id = $1) AS current
        """,
        node_id,
        key,
    )
    if bound["written"]:
        return True
    if bytes(bound["current"]) == key:
        return False
    raise KeyConflict(
        f"node id {node_id!r} is bound to another key; revoke it first"
        f" (`cortensor credentials revoke node {node_id}`) or pick another id"
    )


async def revoke_key(db: Executor, node_id: str) -> bool:
    """Revoke the key bound to `node_id`: its signatures are refused from the next key
    reload on. Returns False when the id had no unrevoked key."""
    revoked: str = await db.execute(
        "UPDATE node_keys SET revoked_at = now() WHERE node_id = $1 AND revoked_at IS NULL",
        node_id,
    )
    return revoked != "UPDATE 0"


class NodeKeys:
    """The keys and refusal counts of a router or guard, on the ledger's pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def bound_keys(self) -> dict[str, bytes]:
        """Every node id's unrevoked public key."""
        rows = await self.pool.fetch(
            "SELECT node_id, public_key FROM node_keys WHERE revoked_at IS NULL"
        )
        return {r["node_id"]: bytes(r["public_key"]) for r in rows}

    async def count_refusals(self, source: str, counts: Mapping[tuple[str, str], int]) -> None:
        """Add `counts` ((publisher, reason) -> how many) to the refusals `source`
        (router, guard) made, in one statement."""
        if not counts:
            return
        keys = list(counts)
        await self.pool.execute(
            """
            INSERT INTO refusals AS r (source, publisher, reason, count)
            SELECT $1, c.publisher, c.reason, c.n
            FROM unnest($2::text[], $3::text[], $4::bigint[]) AS c(publisher, reason, n)
            ON CONFLICT (source, publisher, reason)
                DO UPDATE SET count = r.count + EXCLUDED.count, last_at = now()
            """,
            source,
            [p for p, _ in keys],
            [r for _, r in keys],
            [counts[k] for k in keys],
        )
