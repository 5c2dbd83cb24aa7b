"""Node keys and refusal counts in the ledger (cortensor.adapters.ledger.keys)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortensor.adapters.ledger.keys import KeyConflict, NodeKeys, bind_key, revoke_key
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.errors import BadInput
from cortensor.protocol.signing import public_bytes
from tests.conftest import unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(30)]


@pytest.fixture
def keys(router: RouterLedger) -> NodeKeys:
    return NodeKeys(router.pool)


def new_key() -> bytes:
    return public_bytes(Ed25519PrivateKey.generate())


async def test_the_first_binding_wins_until_revoked(keys: NodeKeys) -> None:
    node, first, second = unique_name("n"), new_key(), new_key()
    assert await bind_key(keys.pool, node, first)
    assert not await bind_key(keys.pool, node, first)
    with pytest.raises(KeyConflict, match="revoke"):
        await bind_key(keys.pool, node, second)
    assert (await keys.bound_keys())[node] == first

    assert await revoke_key(keys.pool, node)
    assert not await revoke_key(keys.pool, node)
    assert node not in await keys.bound_keys()

    assert await bind_key(keys.pool, node, second)
    assert (await keys.bound_keys())[node] == second


async def test_a_key_of_the_wrong_size_is_refused(keys: NodeKeys) -> None:
    with pytest.raises(BadInput, match="32 raw bytes"):
        await bind_key(keys.pool, unique_name("n"), b"short")


async def test_refusals_add_up_per_source_publisher_and_reason(keys: NodeKeys) -> None:
    node = unique_name("n")
    await keys.count_refusals("guard", {(node, "bad signature"): 2})
    await keys.count_refusals("guard", {(node, "bad signature"): 3, (node, "unsigned"): 1})
    await keys.count_refusals("router", {})
    rows = await keys.pool.fetch(
        "SELECT source, reason, count FROM refusals WHERE publisher = $1 ORDER BY reason", node
    )
    assert [tuple(r) for r in rows] == [("guard", "bad signature", 5), ("guard", "unsigned", 1)]
