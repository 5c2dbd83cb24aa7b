"""Ed25519 keys of the nodes that tests play: one per node id, the same in every test
(so that binding it again in a shared ledger changes nothing), and the headers that
carry a node's signature of a payload."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from cortensor.adapters.ledger.keys import Executor, bind_key
from cortensor.protocol.signing import public_bytes, sign, signature_headers


@cache
def key_of(node_id: str) -> Ed25519PrivateKey:
    """The test key of `node_id`."""
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"cortensor test node " + node_id.encode()).digest()
    )


def public_key_of(node_id: str) -> bytes:
    """The raw public key bound to `node_id` in tests."""
    return public_bytes(key_of(node_id))


def signed_by(node_id: str, payload: bytes) -> dict[str, str]:
    """The headers of `payload` signed by `node_id`'s test key."""
    return signature_headers(sign(key_of(node_id), payload))


async def bind(db: Executor, *node_ids: str) -> None:
    """Bind the test keys of `node_ids` in a PostgreSQL ledger."""
    for node_id in node_ids:
        await bind_key(db, node_id, public_key_of(node_id))


def key_file(node_id: str, directory: Path) -> Path:
    """`node_id`'s test key as a node reads it: a PEM file in `directory`."""
    path = directory / f"{node_id}.pem"
    pem = key_of(node_id).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.write_bytes(pem)
    return path
