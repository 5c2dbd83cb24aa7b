"""The key cache of routers and guards (cortensor.services.keyring) on the key book's
twin, with a clock the test moves; and the heartbeat replay bound."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortensor.adapters.memory import MemoryKeys
from cortensor.errors import LedgerUnavailable
from cortensor.protocol.signing import public_bytes, sign, signature_headers
from cortensor.schemas import NodeHeartbeat, utcnow
from cortensor.services.keyring import Keyring
from cortensor.services.router.registry import HEARTBEAT_MAX_AGE_S, heartbeat_refusal

KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ring(book: MemoryKeys, clock: Clock) -> Keyring:
    return Keyring(book, source="guard", refresh_s=10.0, miss_reload_s=1.0, clock=clock)


async def test_unknown_ids_reload_the_keys_at_most_once_a_second() -> None:
    book, clock = MemoryKeys(), Clock()
    keys = ring(book, clock)
    for n in range(100):  # a flood of junk ids
        assert await keys.key(f"junk-{n}") is None
    assert book.loads == 1
    book.bind("n1", public_bytes(KEY))
    assert await keys.key("n1") is None, "bound a moment ago: not looked up again yet"
    clock.now += 1.0
    assert await keys.key("n1") == public_bytes(KEY)
    assert book.loads == 2
    assert await keys.key("junk-0") is None
    assert book.loads == 2


async def test_known_ids_are_refreshed_on_the_refresh_interval() -> None:
    book, clock = MemoryKeys({"n1": public_bytes(KEY)}), Clock()
    keys = ring(book, clock)
    assert await keys.key("n1") == public_bytes(KEY)
    book.revoke("n1")
    clock.now += 9.0
    assert await keys.key("n1") == public_bytes(KEY), "cached until the refresh"
    clock.now += 1.0
    assert await keys.key("n1") is None, "a revoked key signs nothing more"


async def test_refusals_are_counted_by_publisher_and_reason_and_flushed_once() -> None:
    book, clock = MemoryKeys({"n1": public_bytes(KEY)}), Clock()
    keys = ring(book, clock)
    payload = b'{"result": 1}'
    assert await keys.check("n1", payload, signature_headers(sign(KEY, payload)))
    assert not await keys.check("n1", payload, None)
    assert not await keys.check("n1", payload + b" ", signature_headers(sign(KEY, payload)))
    assert not await keys.check("n2", payload, signature_headers(sign(KEY, payload)))
    assert not await keys.check(None, payload, None)
    assert not await keys.check("n1", payload, {"Cortensor-Signature": "not base64!"})
    await keys.flush()
    await keys.flush()
    assert book.refusals == {
        ("guard", "n1", "unsigned"): 1,
        ("guard", "n1", "bad signature"): 1,
        ("guard", "n1", "malformed signature"): 1,
        ("guard", "n2", "unknown node"): 1,
        ("guard", "", "not a node's subject"): 1,
    }


def beat(age_s: float) -> NodeHeartbeat:
    return NodeHeartbeat(
        node_id="n1",
        hw_class="cpu-int8",
        precision="int8",
        tasks=["embed"],
        models=["all-MiniLM-L6-v2"],
        capacity=1,
        inflight=0,
        processed=0,
        started_at=utcnow(),
        created_at=utcnow() - timedelta(seconds=age_s),
    )


def test_a_heartbeat_far_from_the_clock_is_a_replay() -> None:
    now = utcnow()
    assert heartbeat_refusal(beat(0), now) is None
    assert heartbeat_refusal(beat(HEARTBEAT_MAX_AGE_S - 5), now) is None
    assert heartbeat_refusal(beat(HEARTBEAT_MAX_AGE_S + 5), now) == "stale heartbeat"
    future = heartbeat_refusal(beat(-HEARTBEAT_MAX_AGE_S - 5), now)
    assert future == "heartbeat from the future"


class FlakyKeys(MemoryKeys):
    """A key book whose ledger goes down on demand."""

    down = False

    async def bound_keys(self) -> dict[str, bytes]:
        if self.down:
            raise LedgerUnavailable("ledger restarting")
        return await super().bound_keys()


async def test_a_ledger_outage_keeps_the_cached_keys_and_is_not_asked_per_message() -> None:
    book, clock = FlakyKeys({"n1": public_bytes(KEY)}), Clock()
    keys = ring(book, clock)
    assert await keys.key("n1") == public_bytes(KEY)
    book.down = True
    clock.now += 10.0
    assert await keys.key("n1") == public_bytes(KEY), "the cached key still applies"
    assert await keys.key("junk") is None
    assert book.loads == 1


async def test_keys_never_loaded_are_an_error_for_the_caller_to_retry() -> None:
    book = FlakyKeys({"n1": public_bytes(KEY)})
    book.down = True
    with pytest.raises(LedgerUnavailable):
        await ring(book, Clock()).check("n1", b"x", signature_headers(sign(KEY, b"x")))
