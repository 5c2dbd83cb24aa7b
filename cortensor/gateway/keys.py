"""The clients' API keys: who a caller of the gateway is.

`cortensor credentials issue client NAME` writes the key into the client's credentials
file and its sha256 into `<state_dir>/api_keys.json` (user name -> hex digest), beside
the NATS users it also keeps there; `revoke` takes it out. The gateway reads that
registry, and reads it again whenever the file changes, so that a key issued or revoked
while it runs counts from the next request. The keys themselves are never stored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cortensor.adapters.principals.grants import name_of

API_KEYS_FILE = "api_keys.json"


def api_keys_path(state_dir: Path) -> Path:
    """Where the registry of API keys lives under a state directory."""
    return state_dir / API_KEYS_FILE


def key_digest(api_key: str) -> str:
    """What the registry keeps of a key: its sha256, in hex."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class ApiKeys:
    """The API keys of one namespace's clients, by digest, read from the registry."""

    def __init__(self, path: Path, namespace: str) -> None:
        self.path = path
        self.namespace = namespace
        self._seen: tuple[int, int, int] | None = None
        """The file's (inode, size, mtime) when it was last read."""
        self._owners: dict[str, str] = {}

    def owner_of(self, api_key: str) -> str | None:
        """The client a key was issued to; None for a key nobody holds (or revoked)."""
        self._refresh()
        return self._owners.get(key_digest(api_key))

    def _refresh(self) -> None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._owners = None, {}
            return
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if seen == self._seen:
            return
        registry = json.loads(self.path.read_text())
        owners = {}
        for user, digest in registry.items():
            owner = name_of(self.namespace, "client", user)
            if owner is not None and isinstance(digest, str):
                owners[digest] = owner
        self._seen, self._owners = seen, owners
