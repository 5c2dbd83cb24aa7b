"""NATS users of the project's nats-server: a registry file, the authorization file
rendered from it, and a reload of the running server.

The registry (`<state>/nats/users.json`) maps each user name to its bcrypt password
hash and its permissions (none: every permission, the admin). Every change is made
under an exclusive lock on the registry, rewrites `auth.conf` beside it (which the
server's configuration includes) and signals the server to reload; the caller then
waits with `await_login` until the server took it. On a reload the server drops the
connections of users it no longer has.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from cortensor.adapters.principals.grants import NatsPermissions
from cortensor.errors import BrokerUnavailable, SetupIncomplete

_ROUNDS = 4
"""bcrypt cost of the stored hashes: the least. The passwords are 192 random bits, out
of reach of guessing at any cost, and the server checks a hash at every login: while it
does, a reload of the users (each issue or revoke) makes that login fail, so a slow
check means failed logins on a busy server."""
_PREFIX = f"$2a${_ROUNDS:02d}$"


@dataclass(frozen=True, slots=True)
class NatsServerFiles:
    """Where the project's nats-server keeps its configuration under the state directory."""

    directory: Path

    @classmethod
    def under(cls, state_dir: Path) -> NatsServerFiles:
        """The files of the server that `ops/services` runs with `state_dir`."""
        return cls(state_dir / "nats")

    @property
    def registry(self) -> Path:
        """users.json: every user, its password hash and its permissions."""
        return self.directory / "users.json"

    @property
    def auth_conf(self) -> Path:
        """The authorization block the server's configuration includes."""
        return self.directory / "auth.conf"

    @property
    def pid_file(self) -> Path:
        """The running server's process id."""
        return self.directory / "nats.pid"

    @property
    def pid_files(self) -> list[Path]:
        """Every server that reads auth.conf: the one of ops/services (nats.pid) or the
        three of a cluster (ops/cluster: n1.pid, n2.pid, n3.pid)."""
        return sorted(self.directory.glob("*.pid"))


def hash_password(password: str) -> str:
    """A bcrypt hash in the `$2a$` form nats-server recognises as a hash."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(_ROUNDS)).decode()
    return "$2a$" + hashed.removeprefix("$2b$")


def _entry(user: str, spec: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"user": user, "password": spec["password_hash"]}
    permissions = spec.get("permissions")
    if permissions is not None:
        entry["permissions"] = {
            "publish": {"allow": permissions["publish"]},
            "subscribe": {"allow": permissions["subscribe"]},
        }
    return entry


def render(users: dict[str, dict[str, Any]]) -> str:
    """The authorization block for `users` (the registry's content), in the JSON form
    of the server's configuration language."""
    block = {"users": [_entry(user, users[user]) for user in sorted(users)]}
    return "# Written by `cortensor credentials` from users.json; edits are lost.\n" + (
        f"authorization: {json.dumps(block, indent=2)}\n"
    )


class NatsUsers:
    """The registry of the project's NATS users, and the server that enforces it."""

    def __init__(self, files: NatsServerFiles) -> None:
        self.files = files

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The registry, locked against other issuers; written back, rendered and
        reloaded when the block changed it and ended without an error."""
        self.files.directory.mkdir(parents=True, exist_ok=True)
        with (self.files.directory / "users.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            users = self._read()
            before = json.dumps(users, sort_keys=True)
            yield users
            # A reload makes logins that arrive meanwhile fail: none without a change.
            if json.dumps(users, sort_keys=True) == before and self.files.auth_conf.exists():
                return
            _write_private(self.files.registry, json.dumps(users, indent=2, sort_keys=True))
            _write_private(self.files.auth_conf, render(users))
            self.reload()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            users: dict[str, dict[str, Any]] = json.loads(self.files.registry.read_text())
        except FileNotFoundError:
            return {}
        return users

    def users(self) -> list[str]:
        """Every user name in the registry."""
        return sorted(self._read())

    def password_matches(self, user: str, password: str) -> bool:
        """Whether the registry holds `user` with this password."""
        spec = self._read().get(user)
        if spec is None:
            return False
        stored = spec["password_hash"].replace("$2a$", "$2b$", 1).encode()
        return bcrypt.checkpw(password.encode(), stored)

    def hashed_as_now(self, user: str) -> bool:
        """Whether `user`'s stored hash has the current cost."""
        spec = self._read().get(user)
        return spec is not None and str(spec["password_hash"]).startswith(_PREFIX)

    def put(self, user: str, password: str, permissions: NatsPermissions | None) -> None:
        """Add or replace `user` (None as permissions: every permission)."""
        spec: dict[str, Any] = {"password_hash": hash_password(password), "permissions": None}
        if permissions is not None:
            spec["permissions"] = {
                "publish": list(permissions.publish),
                "subscribe": list(permissions.subscribe),
            }
        with self._changing() as users:
            users[user] = spec

    def remove(self, names: Iterable[str]) -> list[str]:
        """Remove the users named; returns those that were there."""
        with self._changing() as users:
            return [name for name in names if users.pop(name, None) is not None]

    def remove_prefixed(self, prefix: str) -> list[str]:
        """Remove every user whose name starts with `prefix` (a namespace's principals)."""
        with self._changing() as users:
            gone = [name for name in users if name.startswith(prefix)]
            for name in gone:
                del users[name]
            return gone

    def _pids(self) -> list[int]:
        pids = []
        for pid_file in self.files.pid_files:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, 0)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                continue
            pids.append(pid)
        return pids

    def running(self) -> bool:
        """Whether a server of these files runs."""
        return bool(self._pids())

    def reload(self) -> None:
        """Have the running servers read auth.conf again (nothing when none runs: it
        reads the file when it starts)."""
        for pid in self._pids():
            os.kill(pid, signal.SIGHUP)


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a file only its owner reads."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


async def _quiet(_: Exception) -> None:
    """A login refused is an answer here, not an error to print."""


async def _logs_in(url: str) -> bool:
    nc = NATS()
    try:
        await nc.connect(
            url,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=5,
            error_cb=_quiet,
        )
    except NatsError as exc:
        if "authorization" in str(exc).lower():
            return False
        raise
    finally:
        await nc.close()  # a failed connect leaves its socket open otherwise
    return True


async def _listens(url: str) -> bool:
    """Whether a server accepts TCP connections at `url`'s address (a login check on a
    server that is down would wait for it: nats-py retries a refused first connect)."""
    parts = urlsplit(url)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 4222), timeout=5
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def await_login(url: str, *, accepted: bool, within_s: float = 10.0) -> None:
    """Wait until the server at `url` accepts (or refuses) the user and password in it:
    a reload takes effect a moment after its signal. A cluster's comma-separated URLs are
    each waited for (a server that is down is passed over: it reads the file when it
    starts), as each server reloads on its own."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if len(urls) > 1:
        up = [one for one in urls if await _listens(one)]
        if not up:
            where = ", ".join(u.rsplit("@", 1)[-1] for u in urls)
            raise BrokerUnavailable(f"cannot reach any NATS server of {where}")
        for one in up:
            await await_login(one, accepted=accepted, within_s=within_s)
        return
    deadline = time.monotonic() + within_s
    while True:
        try:
            if await _logs_in(url) == accepted:
                return
        except (OSError, NatsError) as exc:
            if time.monotonic() >= deadline:
                where = url.rsplit("@", 1)[-1]
                raise BrokerUnavailable(f"cannot reach NATS at {where}: {exc}") from exc
        if time.monotonic() >= deadline:
            raise SetupIncomplete(
                f"NATS did not {'accept' if accepted else 'refuse'} the user within"
                f" {within_s:g} s; is the project's nats-server (ops/services) running"
                " with the auth.conf this command writes?"
            )
        await asyncio.sleep(0.05)
