"""One principal, one credential: issuing and revoking what each principal logs in with.

The command line (stable; tests/security and tools/fleet.py run it):

    cortensor credentials admin --out FILE
        The operator's credentials (RabbitMQ user cortensor-admin, every permission;
        NATS user cortensor-admin, every permission), kept across runs while they still
        work. `ops/services` runs it and writes ~/.config/cortensor/admin.json.
    cortensor credentials issue node ID --out FILE [--hw-class CLASS] [--public-key KEY]
    cortensor credentials issue client NAME --out FILE
    cortensor credentials issue gateway NAME --out FILE
    cortensor credentials issue router|guard|reports|owner NAME --out FILE
        Write a credentials file (JSON, mode 0600): kind, name, namespace, and what that
        principal logs in with: amqp_url, nats_url and nats_inbox_prefix, a database_url
        (router, guard, reports, owner), key_file (a node: its Ed25519 key, beside FILE
        as FILE's stem + .key, made once and kept when issued again; none with
        --public-key, the base64 that the node operator's `cortensor node keygen`
        printed), api_key (a client), state_dir (a gateway: where it reads the clients'
        API keys, as this host keeps them). Issuing a node also declares its queue on its
        class's exchange (--hw-class, default auto: the class `cortensor node` picks
        on this host) and binds its public key to its id.
    cortensor credentials revoke KIND NAME
        Take them back: the users are deleted and their open connections closed, a
        node's key revoked and its queue deleted, a ledger role's login removed.
    cortensor credentials fleet --dir DIR --nodes N [--clients NAMES] [--hw-class CLASS]
        Issue a Procfile fleet's: DIR/router.json, guard.json, reports.json,
        gateway.json, node.1.json .. node.N.json (node ids node-1 .. node-N, as honcho
        names the processes node.1 ..), and NAME.json for each client (default: one
        client named `client`).
    cortensor credentials revoke-namespace
        Revoke every principal of the namespace (a torn-down test namespace).

Each runs as the admin (`--credentials admin.json` or CORTENSOR_CREDENTIALS) in the
namespace of CORTENSOR_NAMESPACE, on the host of the servers: RabbitMQ users are made
with `rabbitmqctl` and NATS users in the project's nats-server's authorization file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
from aio_pika.exceptions import ChannelClosed
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from cortensor.adapters import amqp, bounds
from cortensor.adapters.keyfile import generate_key, load_key
from cortensor.adapters.ledger import keys, roles
from cortensor.adapters.principals import rabbit
from cortensor.adapters.principals.grants import (
    ADMIN_USER,
    Kind,
    check_name,
    inbox_prefix,
    namespace_prefix,
    nats_permissions,
    rabbit_grant,
    user_name,
)
from cortensor.adapters.principals.nats_auth import NatsServerFiles, NatsUsers, await_login
from cortensor.adapters.topology import Topology
from cortensor.catalog import HW_CLASSES
from cortensor.errors import BadInput, ModelsNotPrepared, SetupIncomplete
from cortensor.gateway.keys import api_keys_path, key_digest
from cortensor.inference.hardware import cpu_flags, cuda_available, int8_isa
from cortensor.inference.manifest import load_manifest
from cortensor.protocol.signing import PUBLIC_KEY_BYTES, public_bytes
from cortensor.schemas import ANONYMOUS
from cortensor.services.node.identity import choose_hw_class
from cortensor.settings import Settings, split_urls

DEFAULT_HW_CLASS = "auto"
"""The class a node's queue is bound on unless --hw-class says otherwise: `auto` is the
class `cortensor node --hw-class auto` picks on this host with its prepared models (on
the machines this project runs on, cpu-int8); a node on another host needs its own."""


def local_hw_class(settings: Settings) -> str:
    """The class a node on this host would pick by itself (`cortensor node`'s auto)."""
    isa = int8_isa(cpu_flags())
    try:
        manifest = load_manifest(settings.models_dir)
        served = {c for c in HW_CLASSES if manifest.served(c, isa)}
    except ModelsNotPrepared:
        served = set(HW_CLASSES)
    return choose_hw_class("auto", served=served, int8_isa=isa, cuda=cuda_available())


def _password() -> str:
    """A password safe in a URL's user part without quoting."""
    return secrets.token_urlsafe(24)


def with_login(url: str, user: str, password: str) -> str:
    """`url` (a server's, or a cluster's comma-separated list) with this user and password
    in each."""
    logins = []
    for one in split_urls(url):
        parts = urlsplit(one)
        host = parts.netloc.rsplit("@", 1)[-1]
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
        logins.append(urlunsplit(parts._replace(netloc=netloc)))
    return ",".join(logins)


def _login_of(url: str) -> tuple[str, str] | None:
    """The user and password of `url` (of a cluster's list: its first URL's)."""
    urls = split_urls(url)
    if not urls:
        return None
    parts = urlsplit(urls[0])
    if parts.username is None or parts.password is None:
        return None
    return parts.username, parts.password


def write_credentials(path: Path, values: dict[str, Any]) -> Path:
    """Write a credentials file that only its owner can read (created 0600, replaced
    atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({k: v for k, v in values.items() if v is not None}, f, indent=2)
        f.write("\n")
    tmp.replace(path)
    return path


def _nats_users(settings: Settings) -> NatsUsers:
    return NatsUsers(NatsServerFiles.under(settings.state_dir))


def bootstrap_admin(settings: Settings, out: Path) -> Path:
    """Make sure the admin's users exist on RabbitMQ and NATS with every permission, and
    write their URLs to `out`. Passwords found in an earlier `out` are kept while the
    servers still take them. With the NATS server running, wait until it takes the
    admin's login (a reload is not instant); else it reads auth.conf when it starts."""
    previous: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        previous = json.loads(out.read_text())
    amqp_login = _login_of(previous.get("amqp_url", ""))
    amqp_password = amqp_login[1] if amqp_login else ""
    node = settings.rabbitmq_node
    if not amqp_password or not rabbit.authenticates(ADMIN_USER, amqp_password, node=node):
        amqp_password = _password()
        rabbit.put_user(ADMIN_USER, amqp_password, administrator=True, node=node)
    rabbit.grant_all(ADMIN_USER, node=node)
    nats_login = _login_of(previous.get("nats_url", ""))
    nats_password = nats_login[1] if nats_login else ""
    users = _nats_users(settings)
    if not nats_password or not users.password_matches(ADMIN_USER, nats_password):
        nats_password = _password()
        users.put(ADMIN_USER, nats_password, None)
    elif not users.files.auth_conf.exists() or not users.hashed_as_now(ADMIN_USER):
        users.put(ADMIN_USER, nats_password, None)
    nats_url = with_login(settings.nats_url, ADMIN_USER, nats_password)
    if users.running():
        asyncio.run(await_login(nats_url, accepted=True))
    return write_credentials(
        out,
        {
            "kind": "admin",
            "name": "admin",
            "amqp_url": with_login(settings.amqp_url, ADMIN_USER, amqp_password),
            "nats_url": nats_url,
            **_cluster_fields(settings),
        },
    )


def _cluster_fields(settings: Settings) -> dict[str, Any]:
    """What a cluster's admin file (ops/cluster) holds beyond the URLs: the servers'
    files, the node rabbitmqctl talks to and the streams' replicas, where they are not
    the defaults (a single server's admin.json stays as it was)."""
    fields = {}
    for field in ("state_dir", "rabbitmq_node", "stream_replicas"):
        value = getattr(settings, field)
        if value != Settings.model_fields[field].get_default(call_default_factory=True):
            fields[field] = str(value) if isinstance(value, Path) else value
    return fields


@dataclass(frozen=True, slots=True)
class Issued:
    """A credentials file written, and whose it is."""

    kind: Kind
    name: str
    path: Path


def _public_key(given: str) -> bytes:
    """The raw public key `given` names: the base64 that `cortensor node keygen` prints,
    or a file holding it or a PEM key (public or private; only the public half is used)."""
    path = Path(given)
    text = path.read_bytes() if path.is_file() else given.encode()
    if b"-----BEGIN" in text:
        try:
            loaded = load_pem_public_key(text)
        except ValueError:
            try:
                loaded = load_pem_private_key(text, password=None).public_key()
            except (ValueError, TypeError):
                raise BadInput(f"{given} holds no readable PEM key") from None
        if not isinstance(loaded, Ed25519PublicKey):
            raise BadInput(f"{given} holds a {type(loaded).__name__}, not an Ed25519 key")
        return loaded.public_bytes_raw()
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise BadInput(
            "--public-key takes the base64 public key `cortensor node keygen` printed,"
            " or a file holding it or a PEM key"
        ) from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise BadInput(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, not {len(raw)}")
    return raw


def _node_key(out: Path, public_key: str | None) -> tuple[bytes, str | None]:
    """The node's raw public key, and the key file to name in its credentials: the
    node operator's own (`public_key`; its private half never leaves the node's host),
    else the key beside `out` (made now if there is none, kept when issued again)."""
    if public_key is not None:
        return _public_key(public_key), None
    key_path = out.with_suffix(".key")
    if key_path.exists():
        return public_bytes(load_key(key_path)), key_path.name
    return generate_key(key_path), key_path.name


async def _declare_node_queue(
    admin: Settings, topology: Topology, node_id: str, hw_class: str
) -> None:
    if hw_class not in topology.hw_classes:
        raise BadInput(f"--hw-class takes one of {', '.join(topology.hw_classes)}")
    connection = await amqp.connect_as(admin)
    async with connection:
        try:
            await bounds.declare_bounded(connection, topology.node_queue(node_id, hw_class))
        except ChannelClosed as exc:
            raise SetupIncomplete(
                f"cannot declare node {node_id}'s queue ({exc}); apply the broker topology"
                f" of namespace {topology.namespace} first: `cortensor brokers setup`"
            ) from exc


async def _delete_node_queue(admin: Settings, topology: Topology, node_id: str) -> None:
    connection = await amqp.connect_as(admin)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(topology.node_queue(node_id, topology.hw_classes[0]).name)


async def _bind_key(admin: Settings, node_id: str, public_key: bytes) -> None:
    db = await asyncpg.connect(admin.asyncpg_dsn)
    try:
        await keys.bind_key(db, node_id, public_key)
    finally:
        await db.close()


async def _revoke_key(admin: Settings, node_id: str) -> None:
    db = await asyncpg.connect(admin.asyncpg_dsn)
    try:
        await keys.revoke_key(db, node_id)
    finally:
        await db.close()


@contextlib.contextmanager
def _api_keys(settings: Settings) -> Iterator[dict[str, str]]:
    """The registry of clients' API keys (sha256 hashes, by user name), locked."""
    path = api_keys_path(settings.state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (settings.state_dir / "api_keys.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            registry: dict[str, str] = json.loads(path.read_text())
        except FileNotFoundError:
            registry = {}
        yield registry
        write_credentials(path, registry)


def issue(
    admin: Settings,
    kind: Kind,
    name: str,
    out: Path,
    *,
    hw_class: str = DEFAULT_HW_CLASS,
    public_key: str | None = None,
) -> Path:
    """Create principal `name` of `kind` on every server it uses, with the least it
    needs, and write its credentials to `out`. Issuing again replaces the passwords."""
    if kind == "admin":
        raise BadInput("the admin's credentials come from `cortensor credentials admin`")
    check_name(name)
    if kind == "client" and name == ANONYMOUS:
        # Jobs without a known publisher (probes, jobs recorded before owners) have their
        # verdicts under this name: a client of that name would read them.
        raise BadInput(f"{ANONYMOUS!r} is reserved for jobs without a known publisher")
    topology = Topology(admin.namespace)
    user = user_name(admin.namespace, kind, name)
    values: dict[str, Any] = {"kind": kind, "name": name, "namespace": admin.namespace}
    if kind == "node" and hw_class == "auto":
        hw_class = local_hw_class(admin)
    if kind == "node":
        raw_key, key_file = _node_key(out, public_key)
        asyncio.run(_declare_node_queue(admin, topology, name, hw_class))
        asyncio.run(_bind_key(admin, name, raw_key))
        values["key_file"] = key_file
    grant = rabbit_grant(topology, kind, name, hw_class=hw_class)
    if grant is not None:
        password = _password()
        rabbit.put_user(user, password, node=admin.rabbitmq_node)
        rabbit.grant(user, grant, node=admin.rabbitmq_node)
        values["amqp_url"] = with_login(admin.amqp_url, user, password)
    permissions = nats_permissions(topology, kind, name)
    if permissions is not None:
        password = _password()
        _nats_users(admin).put(user, password, permissions)
        values["nats_url"] = with_login(admin.nats_url, user, password)
        values["nats_inbox_prefix"] = inbox_prefix(admin.namespace, kind, name)
        asyncio.run(await_login(values["nats_url"], accepted=True))
    if kind in roles.ROLE_KINDS:
        values["database_url"] = roles.issue_role(admin, kind)
    if kind == "client":
        api_key = secrets.token_urlsafe(32)
        with _api_keys(admin) as registry:
            registry[user] = key_digest(api_key)
        values["api_key"] = api_key
    if kind == "gateway":
        values["state_dir"] = str(admin.state_dir)
    return write_credentials(out, values)


def revoke(admin: Settings, kind: Kind, name: str) -> list[str]:
    """Take back principal `name`'s credentials everywhere; returns what was removed."""
    if kind == "admin":
        raise BadInput("the admin's credentials are not revoked by a command")
    check_name(name)
    if kind == "client" and name == ANONYMOUS:
        # Jobs without a known publisher (probes, jobs recorded before owners) have their
        # verdicts under this name: a client of that name would read them.
        raise BadInput(f"{ANONYMOUS!r} is reserved for jobs without a known publisher")
    topology = Topology(admin.namespace)
    user = user_name(admin.namespace, kind, name)
    removed = []
    if rabbit.delete_user(user, node=admin.rabbitmq_node):
        removed.append(f"RabbitMQ user {user}")
    users = _nats_users(admin)
    if users.remove([user]):
        removed.append(f"NATS user {user}")
        asyncio.run(_await_gone(admin, user))
    if kind == "node":
        asyncio.run(_revoke_key(admin, name))
        asyncio.run(_delete_node_queue(admin, topology, name))
        removed.append(f"key and queue of node {name}")
    if kind in roles.ROLE_KINDS:
        roles.revoke_role(admin, kind)
        removed.append(f"ledger login of the {kind}s")
    if kind == "client":
        with _api_keys(admin) as registry:
            if registry.pop(user, None) is not None:
                removed.append(f"API key of {name}")
    return removed


async def _await_gone(admin: Settings, user: str) -> None:
    """Wait until NATS refuses `user` (any password: it is gone from the server)."""
    await await_login(with_login(admin.nats_url, user, _password()), accepted=False)


def revoke_namespace(admin: Settings) -> list[str]:
    """Remove every RabbitMQ and NATS user and API key of the admin's namespace."""
    prefix = namespace_prefix(admin.namespace)
    node = admin.rabbitmq_node
    gone = [user for user in rabbit.users(node=node) if user.startswith(prefix)]
    for user in gone:
        rabbit.delete_user(user, node=node)
    gone += _nats_users(admin).remove_prefixed(prefix)
    with _api_keys(admin) as registry:
        for user in [u for u in registry if u.startswith(prefix)]:
            del registry[user]
    return gone


FLEET_OPERATORS: tuple[Kind, ...] = ("router", "guard", "reports", "gateway")

_SIDE_BY_SIDE = 8
"""Principals issued or revoked at once: the servers' tools, not this process, do the
work."""


def fleet_node_id(index: int, process: str = "node") -> str:
    """The id of the Procfile's node.<index> (or generator.<index>)."""
    return f"{process}-{index}"


def issue_fleet(
    admin: Settings,
    directory: Path,
    *,
    nodes: int,
    generators: int = 0,
    clients: Sequence[str] = ("client",),
    hw_class: str = DEFAULT_HW_CLASS,
) -> list[Issued]:
    """Credentials for a Procfile fleet, named as the Procfile reads them, issued side
    by side (each waits on rabbitmqctl and a NATS reload): `nodes` nodes and `generators`
    nodes of the language model. What was issued before a failure is revoked again."""
    wanted: list[tuple[Kind, str, str]] = [(k, k, f"{k}.json") for k in FLEET_OPERATORS]
    for process, count in (("node", nodes), ("generator", generators)):
        wanted += [
            ("node", fleet_node_id(i, process), f"{process}.{i}.json") for i in range(1, count + 1)
        ]
    wanted += [("client", c, f"{c}.json") for c in clients]
    if (nodes or generators) and hw_class == "auto":
        hw_class = local_hw_class(admin)
    with ThreadPoolExecutor(max_workers=_SIDE_BY_SIDE) as pool:
        futures = [
            (kind, name, pool.submit(issue, admin, kind, name, directory / f, hw_class=hw_class))
            for kind, name, f in wanted
        ]
    written: list[Issued] = []
    failures: list[BaseException] = []
    for kind, name, future in futures:
        try:
            written.append(Issued(kind, name, future.result()))
        except Exception as exc:
            failures.append(exc)
    if failures:
        revoke_all(admin, [(done.kind, done.name) for done in written])
        raise failures[0]
    return written


def revoke_all(admin: Settings, principals: Sequence[tuple[Kind, str]]) -> None:
    """Revoke several principals side by side (a fleet's, when it stops)."""
    with ThreadPoolExecutor(max_workers=_SIDE_BY_SIDE) as pool:
        for future in [pool.submit(revoke, admin, kind, name) for kind, name in principals]:
            future.result()
