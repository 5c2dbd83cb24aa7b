"""What the attacker suite holds and does: principals with real credentials, their raw
connections to the real servers, signed messages, and the checks every attack ends with.

An attack is made with nothing but a principal's own credentials file, as someone who
holds it could: plain aio-pika and nats-py connections, no Cortensor service code
between the attacker and the server. What the operator sees (the ledger, the streams)
is read with the admin credential.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractConnection
from aiormq.exceptions import ChannelAccessRefused
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from nats.aio.client import Client as NATS

from cortensor.adapters.topology import Topology
from cortensor.catalog import EMBED_MODEL
from cortensor.client import Client
from cortensor.protocol import signing
from cortensor.schemas import JobRequest, Verdict
from cortensor.settings import Settings
from cortensor.tls import client_context
from tests.conftest import eventually, run_cortensor

CONNECT_TIMEOUT_S = 15
"""How long a NATS connection may take to be greeted before the attempt fails."""

HW_CLASS = "cpu-int8"
"""The hardware class of the fleet's nodes on this machine, and of the attacker's queue."""


FLEET_MARKS = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.nats,
    pytest.mark.postgres,
    pytest.mark.models,
    # The first test to run also starts the fleet (tests/security/conftest.py).
    pytest.mark.timeout(360),
]
"""The marks of every test that attacks the package's fleet."""


@dataclass(frozen=True)
class Principal:
    """Someone holding a credentials file issued by `cortensor credentials issue`."""

    kind: str
    name: str
    file: Path
    settings: Settings

    @property
    def raw(self) -> dict[str, Any]:
        """The credentials file as issued."""
        data: dict[str, Any] = json.loads(self.file.read_text())
        return data

    def private_key(self) -> Ed25519PrivateKey:
        """A node's signing key, from the key file its credentials name."""
        assert self.settings.key_file is not None, f"{self.name} holds no key file"
        key = load_pem_private_key(self.settings.key_file.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key


def principal(path: Path, models_dir: Path) -> Principal:
    """The principal a credentials file describes, with the settings it gives a process."""
    raw = json.loads(path.read_text())
    settings = Settings(credentials=path, models_dir=models_dir)
    return Principal(kind=raw["kind"], name=raw["name"], file=path, settings=settings)


def issue(admin: Settings, kind: str, name: str, out: Path, *extra: str) -> Principal:
    """`cortensor credentials issue KIND NAME --out FILE`, as the operator runs it."""
    done = run_cortensor(admin, "credentials", "issue", kind, name, "--out", str(out), *extra)
    assert done.returncode == 0, done.stderr
    return principal(out, admin.models_dir)


def revoke(admin: Settings, kind: str, name: str) -> None:
    """`cortensor credentials revoke KIND NAME`, as the operator runs it."""
    done = run_cortensor(admin, "credentials", "revoke", kind, name)
    assert done.returncode == 0, done.stderr


@dataclass
class Watched:
    """A NATS connection whose asynchronous errors (permission violations) are kept."""

    nc: NATS
    errors: list[Exception] = field(default_factory=list)

    def violations(self, subject: str) -> list[str]:
        """The permission violations the server reported that name exactly `subject`
        (the server quotes it; nats-py lower-cases the whole line)."""
        quoted = f'"{subject}"'.lower()
        return [
            str(e)
            for e in self.errors
            if "permissions violation" in str(e).lower() and quoted in str(e).lower()
        ]

    async def refused(self, subject: str, *, what: str) -> list[str]:
        """Wait for the server's permission violation naming `subject`."""
        return await eventually(lambda: self.violations(subject), what=what, within=5.0)


@asynccontextmanager
async def nats_as(principal: Principal) -> AsyncIterator[Watched]:
    """A raw NATS connection with `principal`'s credentials (URL, inbox prefix, TLS)."""
    errors: list[Exception] = []

    async def keep(exc: Exception) -> None:
        errors.append(exc)

    s = principal.settings
    nc = NATS()
    try:
        await nc.connect(
            s.nats_url,
            name=f"attacker {principal.kind} {principal.name}",
            inbox_prefix=s.nats_inbox_prefix,
            tls=client_context(s),
            error_cb=keep,
            allow_reconnect=False,
            # A machine busy with other test runs can take seconds to greet a client.
            connect_timeout=CONNECT_TIMEOUT_S,
        )
        yield Watched(nc, errors)
    finally:
        await nc.close()  # a failed connect leaves its socket open otherwise


@asynccontextmanager
async def amqp_as(principal: Principal) -> AsyncIterator[AbstractConnection]:
    """A raw RabbitMQ connection with `principal`'s credentials (not a robust one: a
    refused act closes its channel, and nothing should reopen it)."""
    connection = await aio_pika.connect(
        principal.settings.amqp_url, ssl_context=client_context(principal.settings)
    )
    async with connection:
        yield connection


async def access_refused(act: Callable[[], Awaitable[object]], *, what: str) -> str:
    """Run one AMQP act on a fresh channel and return RabbitMQ's refusal: ACCESS_REFUSED
    closes the channel, so an act that is allowed fails the test."""
    try:
        await act()
    except ChannelAccessRefused as exc:
        return str(exc)
    raise AssertionError(f"RabbitMQ allowed it: {what}")


def signed(principal: Principal, payload: bytes) -> dict[str, str]:
    """The headers a node puts on `payload`: its signature, with its own key."""
    return signing.signature_headers(signing.sign(principal.private_key(), payload))


def result_payload(
    *,
    node_id: str,
    job_id: uuid.UUID,
    assignment_id: uuid.UUID | None = None,
    **fields: Any,
) -> bytes:
    """A well-formed embed result as JSON, any field overridable (to make it hostile)."""
    body: dict[str, Any] = {
        "schema_version": 1,
        "result_id": str(uuid.uuid4()),
        "assignment_id": str(assignment_id or uuid.uuid4()),
        "job_id": str(job_id),
        "node_id": node_id,
        "task": "embed",
        "model": EMBED_MODEL,
        "hw_class": "cpu-int8",
        "precision": "int8",
        "embeddings": [[0.0625] * 384],
        "elapsed_ms": 1.0,
        **fields,
    }
    return json.dumps(body).encode()


@dataclass(frozen=True)
class SecuredFleet:
    """A fleet running on issued credentials, and the principals that attack it."""

    admin: Settings
    topology: Topology
    nodes: tuple[str, ...]
    """The honest nodes' ids."""
    attacker: Principal
    """A registered node of its own (`credentials issue node attacker-1`), no process."""
    client: Principal
    """The client whose jobs the attacks target."""
    other_client: Principal
    """A second client, who tries to read and act as the first."""
    operators: dict[str, Principal]
    """The fleet's router, guard (and reports and gateway, where issued) credentials."""

    async def ledger(self) -> asyncpg.Connection:
        """A connection to the fleet's ledger as the operator."""
        return await asyncpg.connect(self.admin.asyncpg_dsn)

    async def fetchval(self, query: str, *args: object) -> Any:
        """One value from the ledger, read as the operator."""
        conn = await self.ledger()
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    async def refusals(self, source: str, publisher: str) -> int:
        """How many messages `source` (guard, router) refused that named `publisher`."""
        count = await self.fetchval(
            "SELECT coalesce(sum(count), 0) FROM refusals WHERE source = $1 AND publisher = $2",
            source,
            publisher,
        )
        return int(count)

    async def refusals_reach(self, source: str, publisher: str, count: int) -> int:
        """Wait until `source` has refused `count` messages naming `publisher` in all."""

        async def seen() -> int | None:
            refused = await self.refusals(source, publisher)
            return refused if refused >= count else None

        return await eventually(
            seen, what=f"{source} refused {count} messages of {publisher}", within=30.0
        )

    async def events_of(self, node_id: str, job_id: uuid.UUID) -> list[str]:
        """The reputation events the ledger charged `node_id` for one job."""
        conn = await self.ledger()
        try:
            rows = await conn.fetch(
                "SELECT kind FROM reputation_events WHERE node_id = $1 AND job_id = $2",
                node_id,
                job_id,
            )
        finally:
            await conn.close()
        return [r["kind"] for r in rows]

    async def stored_results(self, job_id: uuid.UUID) -> int:
        """How many results of a job reached the ledger."""
        return int(await self.fetchval("SELECT count(*) FROM results WHERE job_id = $1", job_id))

    async def run_job(self, job: JobRequest, *, timeout_s: float = 30.0) -> Verdict:
        """The client's job, run to its verdict through the SDK with its own credentials."""
        async with Client(self.client.settings) as client:
            return await client.run(job, timeout_s=timeout_s)

    async def good_job_verified(self) -> Verdict:
        """The client's next good job is verified by the honest nodes: what every attack
        ends with, so that a refused attack is also shown to have left the network
        working."""
        job = JobRequest(inputs=[f"after the attack {uuid.uuid4().hex}"], redundancy=3)
        verdict = await self.run_job(job)
        assert verdict.status == "verified", verdict.reason
        assert set(verdict.agreeing) <= set(self.nodes), verdict.agreeing
        assert verdict.owner == self.client.name
        return verdict
