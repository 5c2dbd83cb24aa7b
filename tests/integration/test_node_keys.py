"""Node keys and refusal counts in the ledger (cortensor.adapters.ledger.keys)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortensor.adapters.ledger.keys import KeyConflict, NodeKeys, bind_key, revoke_key
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.errors import BadInput
from cortensor.protocol.signing import public_bytes
from cortensor.settings import Settings
from tests.conftest import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(30)]


@pytest.fixture
def keys(router: RouterLedger) -> NodeKeys:
    """The keys as a router reads them, and counts its refusals (the router's role)."""
    return NodeKeys(router.pool)


@pytest.fixture
async def operator(ledger_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The operator's connections: only `cortensor credentials` binds and revokes keys."""
    pool = await asyncpg.create_pool(ledger_settings.asyncpg_dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


def new_key() -> bytes:
    return public_bytes(Ed25519PrivateKey.generate())


async def test_the_first_binding_wins_until_revoked(keys: NodeKeys, operator: asyncpg.Pool) -> None:
    node, first, second = unique_name("n"), new_key(), new_key()
    assert await bind_key(operator, node, first)
    assert not await bind_key(operator, node, first)
    with pytest.raises(KeyConflict, match="revoke"):
        await bind_key(operator, node, second)
    assert (await keys.bound_keys())[node] == first

    assert await revoke_key(operator, node)
    assert not await revoke_key(operator, node)
    assert node not in await keys.bound_keys()

    assert await bind_key(operator, node, second)
    assert (await keys.bound_keys())[node] == second


async def test_a_router_can_neither_bind_nor_revoke_a_key(keys: NodeKeys) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await bind_key(keys.pool, unique_name("n"), new_key())
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await revoke_key(keys.pool, unique_name("n"))


async def test_a_key_of_the_wrong_size_is_refused(operator: asyncpg.Pool) -> None:
    with pytest.raises(BadInput, match="32 raw bytes"):
        await bind_key(operator, unique_name("n"), b"short")


async def test_refusals_add_up_per_source_publisher_and_reason(keys: NodeKeys) -> None:
    node = unique_name("n")
    await keys.count_refusals("guard", {(node, "bad signature"): 2})
    await keys.count_refusals("guard", {(node, "bad signature"): 3, (node, "unsigned"): 1})
    await keys.count_refusals("router", {})
    rows = await keys.pool.fetch(
        "SELECT source, reason, count FROM refusals WHERE publisher = $1 ORDER BY reason", node
    )
    assert [tuple(r) for r in rows] == [("guard", "bad signature", 5), ("guard", "unsigned", 1)]
