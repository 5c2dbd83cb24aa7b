"""Issued credentials on the real servers: each principal can do what its work needs and
is refused the neighbouring things it must not do; revoked credentials stop working,
open connections included.

RabbitMQ refuses an operation by closing the channel with ACCESS_REFUSED (403); NATS
refuses a publish or subscribe with an asynchronous permissions violation (nats-py's
error callback), and delivers nothing to a refused subscription.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import nats
import pytest
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from cortensor.adapters import jetstream
from cortensor.adapters.keyfile import generate_key, load_key
from cortensor.adapters.ledger import migrate
from cortensor.adapters.principals import rabbit
from cortensor.adapters.principals.grants import Kind, user_name
from cortensor.adapters.principals.nats_auth import await_login
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.adapters.topology import Topology
from cortensor.protocol.signing import public_bytes
from cortensor.settings import Settings
from cortensor.tools.credentials import issue, issue_fleet, revoke, revoke_all, revoke_namespace
from tests.conftest import eventually, make_settings, run_cortensor

pytestmark = [pytest.mark.rabbitmq, pytest.mark.nats, pytest.mark.postgres]

HW = "cpu-int8"


@dataclass
class Principals:
    """The admin's settings and the issued principals' settings, by name."""

    admin: Settings
    topology: Topology
    files: dict[str, Path] = field(default_factory=dict)

    def of(self, name: str) -> Settings:
        return Settings(credentials=self.files[name])


@pytest.fixture(scope="module")
def principals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Principals]:
    """Two nodes, two clients, a router and a guard, issued in a namespace of this module's."""
    admin = make_settings()
    migrate.upgrade(admin)
    asyncio.run(setup_brokers(admin))
    directory = tmp_path_factory.mktemp("credentials")
    found = Principals(admin, Topology(admin.namespace))
    wanted: list[tuple[Kind, str]] = [
        ("node", "n-a"),
        ("node", "n-b"),
        ("client", "alice"),
        ("client", "bob"),
        ("router", "router-a"),
        ("guard", "guard-a"),
    ]
    try:
        for kind, name in wanted:
            found.files[name] = issue(admin, kind, name, directory / f"{name}.json", hw_class=HW)
        yield found
    finally:
        revoke_namespace(admin)
        asyncio.run(teardown_brokers(admin, [("n-a", HW), ("n-b", HW)]))
        migrate.drop_database(admin)


@dataclass
class Watched:
    """A NATS connection and the errors the server sent it."""

    nc: NATS
    errors: list[str]

    async def refused(self, what: str) -> None:
        """Wait for the server's permissions violation about `what`."""
        await self.nc.flush()
        await eventually(
            lambda: any(
                "permissions violation" in e.lower() and what.lower() in e.lower()
                for e in self.errors
            ),
            what=f"a permissions violation for {what}",
            within=5,
        )


async def watched(settings: Settings) -> Watched:
    errors: list[str] = []

    async def note(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        settings.nats_url,
        inbox_prefix=settings.nats_inbox_prefix,
        error_cb=note,
        allow_reconnect=False,
        max_reconnect_attempts=0,
    )
    return Watched(nc, errors)


@pytest.fixture
async def admin_nc(principals: Principals) -> AsyncIterator[NATS]:
    nc = await jetstream.connect_as(principals.admin, name="test-admin")
    yield nc
    await nc.close()


async def rabbit_as(settings: Settings) -> AbstractConnection:
    """A plain connection: a channel the broker closes stays closed."""
    return await aio_pika.connect(settings.amqp_url)


async def leave(_: AbstractIncomingMessage) -> None:
    """A consumer that takes nothing: the broker requeues what it was sent at close."""


async def consume(connection: AbstractConnection, queue: str) -> None:
    """Start consuming `queue` on a channel of its own."""
    found = await (await connection.channel()).get_queue(queue)
    await found.consume(leave)


async def publish(connection: AbstractConnection, exchange: str, routing_key: str) -> None:
    """Publish an empty message to `exchange`, confirmed, on a channel of its own."""
    channel = await connection.channel(publisher_confirms=True)
    found = await channel.get_exchange(exchange)
    await found.publish(aio_pika.Message(b"{}"), routing_key=routing_key)


def test_files_are_private_and_say_what_each_principal_needs(principals: Principals) -> None:
    node = json.loads(principals.files["n-a"].read_text())
    client = json.loads(principals.files["alice"].read_text())
    guard = json.loads(principals.files["guard-a"].read_text())
    for path in principals.files.values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert (node["kind"], node["name"]) == ("node", "n-a")
    assert node["nats_inbox_prefix"] == f"_I.{principals.admin.namespace}.node.n-a"
    assert (principals.files["n-a"].parent / node["key_file"]).exists()
    assert not {"database_url", "api_key"} & node.keys()
    assert client["api_key"]
    assert not {"database_url", "key_file"} & client.keys()
    assert "amqp_url" not in guard
    assert guard["database_url"]
    assert guard["nats_url"]
    assert principals.of("n-a").principal == "n-a"
    assert principals.of("n-a").namespace == principals.admin.namespace


async def test_a_node_reads_its_own_queue_and_nothing_else(principals: Principals) -> None:
    t = principals.topology
    own = t.node_queue("n-a", HW).name
    connection = await rabbit_as(principals.of("n-a"))
    async with connection:
        await consume(connection, own)
        with pytest.raises(ChannelAccessRefused):
            await consume(connection, t.node_queue("n-b", HW).name)
        with pytest.raises(ChannelAccessRefused):
            await (await connection.channel()).declare_queue(f"{t.namespace}.node.n-a-extra")
        queue = await (await connection.channel()).get_queue(own)
        with pytest.raises(ChannelAccessRefused):
            await queue.bind(t.hw_exchange("cpu-fp32"), routing_key="n-a")
        with pytest.raises(ChannelAccessRefused):
            await publish(connection, t.hw_exchange(HW), "n-b")


async def test_a_node_publishes_only_under_its_own_id(principals: Principals) -> None:
    t, node = principals.topology, await watched(principals.of("n-a"))
    try:
        js = node.nc.jetstream()
        ack = await js.publish(t.results_subject("job-1", node_id="n-a"), b"{}")
        assert ack.stream == t.results_stream
        await node.nc.publish(t.heartbeat_subject("n-a"), b"{}")
        await node.nc.publish(t.results_subject("job-1", node_id="n-b"), b"{}")
        await node.refused(t.results_subject("job-1", node_id="n-b"))
        await node.nc.publish(t.heartbeat_subject("n-b"), b"{}")
        await node.refused(t.heartbeat_subject("n-b"))
        await node.nc.subscribe(t.results_subject(">", node_id="*"))
        await node.refused(t.results_subject(">", node_id="*"))
        await node.nc.subscribe(t.heartbeat_subject("*"))
        await node.refused(t.heartbeat_subject("*"))
    finally:
        await node.nc.close()


async def test_a_client_submits_and_reads_only_as_itself(
    principals: Principals, admin_nc: NATS
) -> None:
    t = principals.topology
    connection = await rabbit_as(principals.of("alice"))
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        jobs = await channel.get_exchange(t.jobs_exchange)
        await jobs.publish(aio_pika.Message(b"{}"), routing_key=t.jobs_routing_key("alice"))
        with pytest.raises(ChannelAccessRefused):
            await jobs.publish(aio_pika.Message(b"{}"), routing_key=t.jobs_routing_key("bob"))
        with pytest.raises(ChannelAccessRefused):
            await consume(connection, t.router_queue)
    admin_js = admin_nc.jetstream()
    await admin_js.publish(t.verdicts_subject("j-alice", owner="alice"), b'"alice"')
    await admin_js.publish(t.verdicts_subject("j-bob", owner="bob"), b'"bob"')
    alice = await watched(principals.of("alice"))
    try:
        js = alice.nc.jetstream()
        own = await js.get_last_msg(
            t.verdicts_stream, t.verdicts_subject("j-alice", owner="alice"), direct=True
        )
        assert own.data == b'"alice"'
        with pytest.raises((NatsError, asyncio.TimeoutError, NotFoundError)):
            await js.get_last_msg(
                t.verdicts_stream, t.verdicts_subject("j-bob", owner="bob"), direct=True
            )
        await alice.refused(f"$JS.API.DIRECT.GET.{t.verdicts_stream}")
        await alice.nc.subscribe(t.verdicts_subject(">", owner="bob"))
        await alice.refused(t.verdicts_subject(">", owner="bob"))
        await alice.nc.publish(t.verdicts_subject("j-alice", owner="alice"), b"forged")
        await alice.refused(t.verdicts_subject("j-alice", owner="alice"))
    finally:
        await alice.nc.close()


async def test_the_guard_takes_results_and_publishes_verdicts(principals: Principals) -> None:
    t = principals.topology
    node = await jetstream.connect_as(principals.of("n-b"), name="test-node")
    await node.jetstream().publish(t.results_subject("job-g", node_id="n-b"), b"result")
    await node.close()
    guard = await watched(principals.of("guard-a"))
    try:
        js = guard.nc.jetstream()
        consumer = await jetstream.PullConsumer.bind(
            js, stream=t.guard_consumer.stream, durable=t.guard_consumer.durable
        )
        fetched = await eventually(
            lambda: consumer.fetch(10, 0.5), what="the guard fetches the results"
        )
        assert b"result" in [m.data for m in fetched]
        for msg in fetched:
            await msg.ack()
        ack = await js.publish(t.verdicts_subject("job-g", owner="alice"), b"{}")
        assert ack.stream == t.verdicts_stream
        await guard.nc.publish(t.heartbeat_subject("n-b"), b"{}")
        await guard.refused(t.heartbeat_subject("n-b"))
        assert not [e for e in guard.errors if t.heartbeat_subject("n-b") not in e]
    finally:
        await guard.nc.close()


async def test_the_router_hears_heartbeats_and_routes(principals: Principals) -> None:
    t = principals.topology
    router = await watched(principals.of("router-a"))
    node = await jetstream.connect_as(principals.of("n-a"), name="test-node")
    try:
        heard: list[bytes] = []

        async def hear(msg: nats.aio.msg.Msg) -> None:
            heard.append(msg.data)

        await router.nc.subscribe(t.heartbeat_subject("*"), cb=hear)
        await router.nc.flush()
        await node.publish(t.heartbeat_subject("n-a"), b"beat")
        await eventually(lambda: b"beat" in heard, what="the router hears the heartbeat")
        await router.nc.jetstream().publish(t.verdicts_subject("job-r", owner="bob"), b"{}")
        await router.nc.subscribe(t.results_subject(">", node_id="*"))
        await router.refused(t.results_subject(">", node_id="*"))
    finally:
        await node.close()
        await router.nc.close()
    connection = await rabbit_as(principals.of("router-a"))
    async with connection:
        await consume(connection, t.router_queue)
        await publish(connection, t.hw_exchange(HW), "n-a")
        with pytest.raises(ChannelAccessRefused):
            await publish(connection, t.jobs_exchange, t.jobs_routing_key("alice"))


async def test_revoked_credentials_stop_working_open_connections_included(
    principals: Principals, tmp_path: Path
) -> None:
    admin = principals.admin
    issued = await asyncio.to_thread(issue, admin, "node", "n-gone", tmp_path / "gone.json")
    settings = Settings(credentials=issued)
    connection = await aio_pika.connect(settings.amqp_url)
    closed = asyncio.Event()
    connection.close_callbacks.add(lambda *_: closed.set())
    nc = await nats.connect(settings.nats_url, allow_reconnect=False, max_reconnect_attempts=0)
    await asyncio.to_thread(revoke, admin, "node", "n-gone")
    await asyncio.wait_for(closed.wait(), 10)
    await eventually(lambda: nc.is_closed, what="NATS drops the revoked node's connection")
    await connection.close()
    user = user_name(admin.namespace, "node", "n-gone")
    assert user not in rabbit.users()
    password = urlsplit(settings.amqp_url).password
    assert password
    assert not rabbit.authenticates(user, password)
    await await_login(settings.nats_url, accepted=False, within_s=0.1)


def test_the_command_line_issues_and_revokes(principals: Principals, tmp_path: Path) -> None:
    out, admin = tmp_path / "carol.json", principals.admin
    done = run_cortensor(admin, "credentials", "issue", "client", "carol", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["name"] == "carol"
    user = user_name(admin.namespace, "client", "carol")
    assert user in rabbit.users()
    job = str(uuid.uuid4())
    as_carol = run_cortensor(admin, "--credentials", str(out), "result", job)
    assert as_carol.returncode == 6, as_carol.stderr
    assert f"the network has no record of job {job}" in as_carol.stderr
    done = run_cortensor(admin, "credentials", "revoke", "client", "carol")
    assert done.returncode == 0, done.stderr
    assert "RabbitMQ user" in done.stdout
    assert "NATS user" in done.stdout
    assert user not in rabbit.users()
    refused = run_cortensor(admin, "--credentials", str(out), "result", job)
    assert refused.returncode != 0
    said = " ".join(refused.stderr.split())  # the console wraps long lines
    assert f"refused the login of {user}; check the credentials file {out}" in said
    refused = run_cortensor(admin, "credentials", "issue", "wizard", "x", "--out", str(out))
    assert refused.returncode != 0
    assert "KIND is one of" in refused.stderr


async def bound_key(admin: Settings, node_id: str) -> bytes | None:
    db = await asyncpg.connect(admin.asyncpg_dsn)
    try:
        row = await db.fetchval(
            "SELECT public_key FROM node_keys WHERE node_id = $1 AND revoked_at IS NULL", node_id
        )
    finally:
        await db.close()
    return None if row is None else bytes(row)


def test_a_node_keeps_its_key_and_may_bring_its_own(principals: Principals, tmp_path: Path) -> None:
    admin = principals.admin
    first = issue(admin, "node", "n-key", tmp_path / "n-key.json")
    key_file = tmp_path / json.loads(first.read_text())["key_file"]
    public = public_bytes(load_key(key_file))
    assert asyncio.run(bound_key(admin, "n-key")) == public
    issue(admin, "node", "n-key", tmp_path / "n-key.json")  # again: same key, still bound
    assert public_bytes(load_key(key_file)) == public
    revoke(admin, "node", "n-key")
    assert asyncio.run(bound_key(admin, "n-key")) is None

    own = generate_key(tmp_path / "own.pem")  # the node operator's, never sent
    brought = issue(
        admin, "node", "n-own", tmp_path / "n-own.json", public_key=base64.b64encode(own).decode()
    )
    assert "key_file" not in json.loads(brought.read_text())
    assert asyncio.run(bound_key(admin, "n-own")) == own
    revoke(admin, "node", "n-own")


def test_a_fleets_credentials_are_named_as_the_procfile_reads_them(
    principals: Principals, tmp_path: Path
) -> None:
    admin = principals.admin
    issued = issue_fleet(admin, tmp_path, nodes=2, clients=["carol"], hw_class=HW)
    files = {done.path.name: (done.kind, done.name) for done in issued}
    assert files == {
        "router.json": ("router", "router"),
        "guard.json": ("guard", "guard"),
        "reports.json": ("reports", "reports"),
        "gateway.json": ("gateway", "gateway"),
        "node.1.json": ("node", "node-1"),
        "node.2.json": ("node", "node-2"),
        "carol.json": ("client", "carol"),
    }
    for done in issued:
        raw = json.loads(done.path.read_text())
        assert (raw["kind"], raw["name"], raw["namespace"]) == (
            done.kind,
            done.name,
            admin.namespace,
        )
    # The gateway reads the clients' API keys where this host keeps them.
    gateway = json.loads((tmp_path / "gateway.json").read_text())
    assert gateway["state_dir"] == str(admin.state_dir)
    prefix = f"{admin.namespace}."
    ours = {"node.node-1", "node.node-2", "client.carol", "router.router", "gateway.gateway"}
    assert {prefix + u for u in ours} <= set(rabbit.users())
    revoke_all(admin, [(done.kind, done.name) for done in issued])
    assert not {prefix + u for u in ours} & set(rabbit.users())
