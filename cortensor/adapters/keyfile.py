"""A node's Ed25519 key file: made once by `cortensor node keygen`, read at every start.

The private key is a PKCS#8 PEM readable by its owner only (0600); the node keeps it,
and only its public key leaves the machine (bound to the node id when the node's
credentials are issued: cortensor.adapters.ledger.keys).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from cortensor.errors import BadInput, BadSetting, SetupIncomplete
from cortensor.protocol.signing import public_bytes
from cortensor.settings import Settings

WHERE = (
    "pass --key FILE, set CORTENSOR_KEY_FILE, or use a credentials file that names"
    " key_file; make a key with `cortensor node keygen --key FILE`"
)
NO_KEY = f"a node signs its results with its Ed25519 key, and none was given: {WHERE}"


def generate_key(path: Path) -> bytes:
    """Write a new private key to `path` (0600; an existing file is never replaced) and
    return its raw public key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise BadInput(
            f"{path} exists; a node keeps its key (remove the file to make a new one,"
            " then have its credentials issued again)"
        ) from exc
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return public_bytes(key)


def load_key(path: Path) -> Ed25519PrivateKey:
    """The private key in `path`; errors name the file and what is wrong with it."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError as exc:
        raise SetupIncomplete(f"key file {path} does not exist; {WHERE}") from exc
    except OSError as exc:
        raise BadSetting(f"key file {path} cannot be read: {exc.strerror}") from exc
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BadSetting(
            f"key file {path} holds no unencrypted PEM private key (make one with"
            " `cortensor node keygen --key FILE`)"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BadSetting(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def node_key(settings: Settings) -> Ed25519PrivateKey:
    """The key of the node `settings` describe (settings.key_file)."""
    if settings.key_file is None:
        raise SetupIncomplete(NO_KEY)
    return load_key(settings.key_file)
