"""What a node's signature is, and how a router or guard checks one: Ed25519 over the
exact payload bytes of a result or heartbeat.

The signature travels in the NATS header `Cortensor-Signature`, standard base64. The
signer is the node id that the subject names (`{ns}.results.<node>.<job>`,
`{ns}.nodes.<node>.heartbeat`); the verifier looks that id's key up and checks the
bytes as received, before parsing them, so that nothing unsigned reaches the ledger.

Ed25519 signing is deterministic: the same key and bytes give the same signature. The
JetStream message id of a result is derived from its signature (`result_msg_id`), so a
retried publish of the same result is deduplicated, while a peer who knows the
assignment id cannot publish first under the real result's id and have it dropped.

Pure: no key generation (that takes randomness) and no key files (cortensor.adapters
.keyfile reads and writes them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SIGNATURE_HEADER = "Cortensor-Signature"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_ENCODED_SIGNATURE_CHARS = 88
"""Standard base64 of 64 bytes, padding included."""


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of `private_key`, as bound to a node id."""
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(private_key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """The 64-byte signature of `payload`."""
    return private_key.sign(payload)


def verify(public_key: bytes, payload: bytes, signature: bytes) -> bool:
    """Whether `signature` is `public_key`'s over exactly `payload`; False for a key or
    signature of the wrong size too."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def encode_signature(signature: bytes) -> str:
    """The header value of a signature."""
    return base64.b64encode(signature).decode("ascii")


def decode_signature(value: str | None) -> bytes | None:
    """The signature a header value carries; None when absent or not exactly the
    standard base64 of 64 bytes."""
    if value is None or len(value) != _ENCODED_SIGNATURE_CHARS:
        return None
    try:
        signature = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    if len(signature) != SIGNATURE_BYTES or encode_signature(signature) != value:
        return None
    return signature


def signature_headers(signature: bytes) -> dict[str, str]:
    """The headers that carry `signature`."""
    return {SIGNATURE_HEADER: encode_signature(signature)}


def signature_of(headers: Mapping[str, Any] | None) -> bytes | None:
    """The signature in a message's headers; None when absent or malformed."""
    value = (headers or {}).get(SIGNATURE_HEADER)
    return decode_signature(value) if isinstance(value, str) else None


def result_msg_id(signature: bytes) -> str:
    """The JetStream message id of a signed result: a digest of its signature, which
    only the signer can produce and which a retry of the same bytes reproduces."""
    return hashlib.sha256(signature).hexdigest()


def refusal(
    public_key: bytes | None, payload: bytes, headers: Mapping[str, Any] | None
) -> str | None:
    """Why a message that claims to come from the node whose bound key is `public_key`
    (None: no key bound) is refused, or None when its signature is that key's over
    exactly `payload`."""
    if public_key is None:
        return "unknown node"
    signature = signature_of(headers)
    if signature is None:
        present = SIGNATURE_HEADER in (headers or {})
        return "malformed signature" if present else "unsigned"
    if not verify(public_key, payload, signature):
        return "bad signature"
    return None
