"""A node's key file (cortensor.adapters.keyfile): made 0600 once, read back, and errors
that say what to do."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from cortensor.adapters.keyfile import generate_key, load_key, node_key
from cortensor.errors import BadInput, BadSetting, SetupIncomplete
from cortensor.protocol.signing import public_bytes
from cortensor.settings import Settings


def test_a_generated_key_is_private_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "node.pem"
    public = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_bytes(load_key(path)) == public
    with pytest.raises(BadInput, match="exists"):
        generate_key(path)
    assert public_bytes(load_key(path)) == public, "never replaced"


def test_a_node_without_a_key_is_told_where_to_give_one() -> None:
    with pytest.raises(SetupIncomplete, match=r"--key.*CORTENSOR_KEY_FILE.*credentials"):
        node_key(Settings(key_file=None))


def test_bad_key_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(SetupIncomplete, match="does not exist"):
        load_key(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(BadSetting, match="no unencrypted PEM"):
        load_key(junk)
    other = tmp_path / "ec.pem"
    ec = generate_private_key(SECP256R1())
    other.write_bytes(ec.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(BadSetting, match="not an Ed25519 key"):
        load_key(other)
