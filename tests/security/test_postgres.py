"""Attacks on the ledger. Nodes and clients hold no way in at all; the operators'
roles hold only what they need: the router and the guard cannot rewrite or hide the
reputation events (nor switch off their append-only trigger), reports read no content.

Seen before: router and guard reached PostgreSQL as the superuser, and could disable
the append-only trigger on reputation events.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from cortensor.adapters.ledger import roles
from tests.security.harness import FLEET_MARKS, Principal, SecuredFleet

pytestmark = FLEET_MARKS


TAMPERING = [
    "ALTER TABLE reputation_events DISABLE TRIGGER ALL",
    "ALTER TABLE reputation_events DISABLE TRIGGER USER",
    "UPDATE reputation_events SET kind = 'agreed'",
    "DELETE FROM reputation_events",
    "TRUNCATE reputation_events",
    "DROP TABLE reputation_events",
    "UPDATE node_standing SET trust = 'active'",
    "DELETE FROM node_keys",
    "CREATE ROLE intruder LOGIN SUPERUSER",
]
"""What a router or guard must not do to the ledger."""


def _login(url: str, user: str, password: str | None) -> str:
    """`url` logging in as `user` with `password` (none: no password at all)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return urlunsplit((parts.scheme, f"{auth}@{host}:{parts.port or 5432}", parts.path, "", ""))


async def test_nodes_and_clients_hold_no_ledger_login(secured: SecuredFleet) -> None:
    """A node's or a client's credentials carry no database URL, and logging in with
    the names they do carry, or as the operators' roles without their passwords, is
    refused."""
    for holder in (secured.attacker, secured.client, secured.other_client):
        assert holder.raw.get("database_url") is None, holder.name
    database = roles.database_of(secured.admin)
    ns = secured.admin.namespace
    attempts = [
        (f"{ns}.node.{secured.attacker.name}", None),
        (f"{ns}.client.{secured.client.name}", None),
        *((roles.role_name(database, kind), None) for kind in roles.ROLE_KINDS),
        *((roles.role_name(database, kind), "guessed") for kind in roles.ROLE_KINDS),
    ]
    for user, password in attempts:
        # No such role, or a wrong password (InvalidPasswordError is one).
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(_login(secured.admin.asyncpg_dsn, user, password))
    await secured.good_job_verified()


async def _refused(principal: Principal, statement: str) -> None:
    conn = await asyncpg.connect(principal.settings.asyncpg_dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_router_and_guard_cannot_rewrite_reputation(secured: SecuredFleet) -> None:
    """The router's and the guard's roles log in with their credentials, and cannot
    switch off the append-only trigger, rewrite or remove events, or promote a node."""
    await secured.good_job_verified()
    before = await secured.fetchval("SELECT count(*) FROM reputation_events")
    for kind in ("router", "guard"):
        operator = secured.operators[kind]
        conn = await asyncpg.connect(operator.settings.asyncpg_dsn)
        try:
            assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = user")
        finally:
            await conn.close()
        for statement in TAMPERING:
            await _refused(operator, statement)
    assert await secured.fetchval("SELECT count(*) FROM reputation_events") >= before
    await secured.good_job_verified()


async def test_reports_read_no_content(secured: SecuredFleet) -> None:
    """The reports role reads the report views, and neither jobs' inputs nor results."""
    reports = secured.operators["reports"]
    for statement in (
        "SELECT inputs FROM jobs LIMIT 1",
        "SELECT * FROM results LIMIT 1",
        "SELECT * FROM reputation_events LIMIT 1",
        *TAMPERING,
    ):
        await _refused(reports, statement)
    await secured.good_job_verified()
