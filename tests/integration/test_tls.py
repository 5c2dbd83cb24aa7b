"""The whole loop over TLS, on private servers that speak nothing else.

A throwaway CA signs a certificate for 127.0.0.1 and localhost and a client
certificate; a RabbitMQ node, a nats-server with JetStream and a PostgreSQL cluster of
this module's own listen with TLS only and ask for the client certificate. The ledger
is migrated, the brokers set up, a router, a guard and two nodes run as `cortensor`
processes with CORTENSOR_TLS_* and the private URLs, and the SDK gets a verified
verdict. A process whose CA is another one is refused by every server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import nats
import psycopg
import pytest
from aiormq.exceptions import AMQPConnectionError

from cortensor.adapters import amqp
from cortensor.adapters.keyfile import generate_key
from cortensor.adapters.ledger import keys, migrate
from cortensor.adapters.provision import setup_brokers
from cortensor.adapters.topology import Topology
from cortensor.catalog import EMBED_MODEL
from cortensor.client import Client
from cortensor.schemas import JobRequest
from cortensor.settings import Settings
from cortensor.tls import client_context
from tests.conftest import unique_name
from tests.integration.tls_servers import (
    NatsServer,
    Pki,
    PostgresServer,
    RabbitServer,
    make_pki,
)

pytestmark = [pytest.mark.slow, pytest.mark.models, pytest.mark.timeout(300)]

NODES = ("tls-node-1", "tls-node-2")
HW_CLASS = "cpu-int8"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Private:
    """The throwaway CA's files and the settings that reach the private servers."""

    pki: Pki
    settings: Settings

    def with_ca(self, ca: Path) -> Settings:
        """The same principal, verifying the servers against another CA."""
        return self.settings.model_copy(update={"tls_ca": ca})


@pytest.fixture(scope="module")
def private(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    """The servers, started and stopped once for the module."""
    root = tmp_path_factory.mktemp("tls")
    pki = make_pki(root / "pki")
    for name in ("nats", "rabbitmq"):
        (root / name).mkdir()
    nats, postgres, rabbit = (
        NatsServer(pki, root / "nats"),
        PostgresServer(pki),
        RabbitServer(pki, root / "rabbitmq"),
    )
    started: list[NatsServer | PostgresServer | RabbitServer] = []
    # A credentials file in the environment (the operator's) would win over the
    # private URLs: this module's principal is its own.
    with pytest.MonkeyPatch.context() as env:
        env.delenv("CORTENSOR_CREDENTIALS", raising=False)
        try:
            for name, server in (("nats", nats), ("postgres", postgres), ("rabbitmq", rabbit)):
                began = time.monotonic()
                started.append(server)
                server.start()
                # RabbitMQ takes most of the module's time (about 15 s here).
                log.info("private %s up in %.1f s", name, time.monotonic() - began)
            settings = Settings(
                namespace=unique_name("tls"),
                amqp_url=rabbit.url,
                nats_url=nats.url,
                database_url=postgres.url,
                models_dir=models_dir,
                tls_ca=pki.ca,
                tls_cert=pki.client_cert,
                tls_key=pki.client_key,
            )
            yield Private(pki, settings)
        finally:
            for server in reversed(started):
                server.stop()


def _environment(settings: Settings) -> dict[str, str]:
    """A `cortensor` process's environment: this one's without any CORTENSOR_*, then
    the private servers' URLs and the TLS files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTENSOR_")}
    assert settings.tls_ca is not None
    assert settings.tls_cert is not None
    assert settings.tls_key is not None
    env.update(
        {
            "CORTENSOR_NAMESPACE": settings.namespace,
            "CORTENSOR_AMQP_URL": settings.amqp_url,
            "CORTENSOR_NATS_URL": settings.nats_url,
            "CORTENSOR_DATABASE_URL": settings.database_url,
            "CORTENSOR_MODELS_DIR": str(settings.models_dir),
            "CORTENSOR_TLS_CA": str(settings.tls_ca),
            "CORTENSOR_TLS_CERT": str(settings.tls_cert),
            "CORTENSOR_TLS_KEY": str(settings.tls_key),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _active_nodes(settings: Settings) -> int:
    with psycopg.connect(settings.asyncpg_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM node_standing WHERE model = '' AND trust = 'active'"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def _enrol(settings: Settings, directory: Path) -> None:
    """What issuing a node's credentials does, on servers without per-principal logins:
    a key per node (its public half bound to its id in the ledger) and its queue."""
    topology = Topology(settings.namespace)
    db = await asyncpg.connect(settings.asyncpg_dsn)
    connection = await amqp.connect_as(settings)
    try:
        channel = await connection.channel()
        for node in NODES:
            await keys.bind_key(db, node, generate_key(directory / f"{node}.pem"))
            await amqp.declare_queue(channel, topology.node_queue(node, HW_CLASS))
    finally:
        await connection.close()
        await db.close()


@pytest.fixture(scope="module")
def fleet(private: Private, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A router, a guard and two nodes on the private servers, once both nodes passed
    their probes; the settings of a client."""
    settings = private.settings
    migrate.upgrade(settings)
    asyncio.run(setup_brokers(settings))
    logs = tmp_path_factory.mktemp("tls-fleet")
    asyncio.run(_enrol(settings, logs))
    cortensor = str(Path(sys.executable).parent / "cortensor")
    commands = {"router": [cortensor, "router"], "guard": [cortensor, "guard"]}
    for node in NODES:
        commands[node] = [
            *(cortensor, "node", "--node-id", node, "--key", str(logs / f"{node}.pem")),
            *("--hw-class", HW_CLASS, "--models", EMBED_MODEL),
        ]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, argv in commands.items():
            with (logs / f"{name}.log").open("ab") as log:
                processes.append(
                    subprocess.Popen(
                        argv, env=_environment(settings), stdout=log, stderr=subprocess.STDOUT
                    )
                )
        deadline = time.monotonic() + 120
        while _active_nodes(settings) < len(NODES):
            exited = [p.args for p in processes if p.poll() is not None]
            assert not exited, f"{exited} exited; see {logs}"
            assert time.monotonic() < deadline, f"nodes not admitted within 120 s; see {logs}"
            time.sleep(0.2)
        yield settings
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_a_job_gets_a_verified_verdict_over_tls(fleet: Settings) -> None:
    async with Client(fleet) as client:
        verdict = await client.run(
            JobRequest(inputs=["TLS on every connection."], redundancy=2), timeout_s=60
        )

    assert (verdict.status, sorted(verdict.agreeing)) == ("verified", sorted(NODES))


async def test_rabbitmq_refuses_a_process_that_trusts_another_ca(private: Private) -> None:
    with pytest.raises((AMQPConnectionError, ssl.SSLError)):
        await amqp.connect_as(private.with_ca(private.pki.other_ca))


async def test_nats_refuses_a_process_that_trusts_another_ca(private: Private) -> None:
    wrong = private.with_ca(private.pki.other_ca)
    # One attempt: jetstream.connect retries a server it cannot reach for ever.
    with pytest.raises(ssl.SSLError):
        await nats.connect(wrong.nats_url, tls=client_context(wrong), allow_reconnect=False)


async def test_postgres_refuses_a_process_that_trusts_another_ca(private: Private) -> None:
    with pytest.raises(ssl.SSLError):
        await asyncpg.connect(private.with_ca(private.pki.other_ca).asyncpg_dsn)
