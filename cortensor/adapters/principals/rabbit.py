"""RabbitMQ users and their permissions, through `rabbitmqctl`.

The issuer runs on the broker's host as a user that may run `rabbitmqctl` (root, or
rabbitmq): the CLI tool needs no management plugin, no HTTP port and no password of
its own, and it is what an operator of the broker already uses. Passwords reach it on
standard input, never on a command line that `ps` would show. `node` names the RabbitMQ
node to talk to (`rabbitmqctl -n`, Settings.rabbitmq_node: a cluster's users and
permissions are on every node, so any one of them will do); empty, rabbitmqctl's default.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping

from cortensor.adapters.principals.grants import RabbitGrant
from cortensor.errors import BrokerUnavailable, SetupIncomplete

VHOST = "/"


def _ctl(
    *args: str, stdin: str | None = None, check: bool = True, node: str = ""
) -> subprocess.CompletedProcess[str]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise SetupIncomplete(
            "rabbitmqctl is not on PATH: issue credentials on the RabbitMQ host, as root"
        )
    target = ["-n", node] if node else []
    done = subprocess.run(
        [ctl, "-q", *target, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if check and done.returncode != 0:
        message = " ".join((done.stderr or done.stdout).split())
        raise BrokerUnavailable(f"rabbitmqctl {args[0]} failed: {message}")
    return done


def users(*, node: str = "") -> list[str]:
    """Every RabbitMQ user name."""
    lines = _ctl("list_users", "--no-table-headers", node=node).stdout.splitlines()
    return [line.split("\t", 1)[0] for line in lines if line.strip()]


def queues(*, node: str = "") -> list[str]:
    """Every queue name of the vhost."""
    lines = _ctl("list_queues", "-p", VHOST, "name", "--no-table-headers", node=node)
    return [line.strip() for line in lines.stdout.splitlines() if line.strip()]


def authenticates(user: str, password: str, *, node: str = "") -> bool:
    """Whether RabbitMQ accepts this user and password."""
    done = _ctl("authenticate_user", user, stdin=password, check=False, node=node)
    return done.returncode == 0


def put_user(user: str, password: str, *, administrator: bool = False, node: str = "") -> None:
    """Create `user` with `password`, or set its password when it exists."""
    added = _ctl("add_user", user, stdin=password, check=False, node=node)
    if added.returncode != 0:
        if "already exists" not in added.stderr + added.stdout:
            message = " ".join((added.stderr or added.stdout).split())
            raise BrokerUnavailable(f"rabbitmqctl add_user failed: {message}")
        _ctl("change_password", user, stdin=password, node=node)
    if administrator:
        _ctl("set_user_tags", user, "administrator", node=node)


def grant(user: str, permissions: RabbitGrant, *, node: str = "") -> None:
    """Set `user`'s permissions on the vhost (and its topic permission, if any)."""
    _ctl(
        "set_permissions",
        "-p",
        VHOST,
        user,
        permissions.configure,
        permissions.write,
        permissions.read,
        node=node,
    )
    if permissions.topic is not None:
        exchange, write, read = permissions.topic
        _ctl("set_topic_permissions", "-p", VHOST, user, exchange, write, read, node=node)


def grant_all(user: str, *, node: str = "") -> None:
    """Every permission on the vhost: the admin's."""
    _ctl("set_permissions", "-p", VHOST, user, ".*", ".*", ".*", node=node)


def delete_user(user: str, *, node: str = "") -> bool:
    """Delete `user` and close its open connections; False when there was no such user."""
    deleted = _ctl("delete_user", user, check=False, node=node)
    if deleted.returncode != 0:
        if "does not exist" in deleted.stderr + deleted.stdout:
            return False
        message = " ".join((deleted.stderr or deleted.stdout).split())
        raise BrokerUnavailable(f"rabbitmqctl delete_user failed: {message}")
    close_connections(user, node=node)
    return True


def close_connections(user: str, *, node: str = "") -> None:
    """Close every open connection of `user` (on every node of a cluster), so that a
    revoked principal is cut off now rather than at its next login."""
    _ctl("close_all_user_connections", user, "credentials revoked", node=node)


def set_policy(name: str, pattern: str, definition: Mapping[str, object]) -> None:
    """Apply `definition` (RabbitMQ policy keys: max-length, overflow, ...) to the queues
    whose names match `pattern`; replaces a policy of the same name."""
    _ctl(
        "set_policy",
        "-p",
        VHOST,
        "--apply-to",
        "queues",
        "--priority",
        "1",
        name,
        pattern,
        json.dumps(dict(definition)),
    )
