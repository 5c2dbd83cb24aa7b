"""The ledger's login roles (cortensor.adapters.ledger.roles), on PostgreSQL: each can do
its job and nothing else, a password is required, and a revoked role is locked out.

The ledger's own contract and integration tests run as the router's and the guard's
roles (tests.conftest.role_dsn), which proves that the grants are enough; these prove
they are no more than that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import psycopg
import pytest
from sqlalchemy.engine import make_url

from cortensor.adapters.ledger import migrate, roles
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.errors import SetupIncomplete
from cortensor.settings import Settings
from cortensor.tools.reports import find_report, reports, run_report
from tests.conftest import eventually, make_settings, role_dsn
from tests.integration.test_ledger_store import open_running

pytestmark = pytest.mark.postgres

CONTENT_COLUMNS = {
    ("jobs", "inputs"),
    ("jobs", "audio"),
    ("jobs", "params"),
    ("results", "output"),
    ("verdicts", "payload"),
}
"""Where the ledger keeps user content (and a probe's reference output)."""

FORBIDDEN_TO_WRITERS = [
    "UPDATE reputation_events SET kind = 'agreed'",
    "DELETE FROM reputation_events",
    "TRUNCATE reputation_events",
    "ALTER TABLE reputation_events DISABLE TRIGGER reputation_events_append_only",
    "ALTER TABLE reputation_events DISABLE TRIGGER ALL",
    "DROP TRIGGER reputation_events_append_only ON reputation_events",
    "UPDATE node_standing SET trust = 'active'",
    "INSERT INTO node_standing (node_id, model) VALUES ('forged', '')",
    "SELECT cortensor_fold('n', '', 'agreed', 0, false)",
    "DELETE FROM jobs",
    "TRUNCATE jobs CASCADE",
    "INSERT INTO node_keys (node_id, public_key) VALUES ('n', '\\x00'::bytea)",
    "UPDATE alembic_version SET version_num = '0001'",
    "CREATE TABLE mine (x int)",
    "CREATE TEMP TABLE mine (x int)",
]


@pytest.fixture(scope="module")
def admin(ledger_settings: Settings) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(ledger_settings.database_url, autocommit=True) as conn:
        yield conn


async def connect_as(settings: Settings, kind: roles.RoleKind) -> asyncpg.Connection:
    return await asyncpg.connect(role_dsn(settings, kind))


@pytest.fixture
async def router_db(ledger_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect_as(ledger_settings, "router")
    yield conn
    await conn.close()


@pytest.mark.parametrize("kind", ["router", "guard"])
@pytest.mark.parametrize("statement", FORBIDDEN_TO_WRITERS)
async def test_writers_cannot_rewrite_history_or_standings(
    ledger_settings: Settings, kind: roles.RoleKind, statement: str
) -> None:
    conn = await connect_as(ledger_settings, kind)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_a_writer_records_events_and_the_fold_updates_standings(
    ledger_settings: Settings, router_db: asyncpg.Connection
) -> None:
    router = await RouterLedger.connect(role_dsn(ledger_settings, "router"))
    try:
        running = await open_running(router, redundancy=1)
    finally:
        await router.close()
    node = running.nodes[0]

    await router_db.execute(
        "INSERT INTO reputation_events (node_id, job_id, assignment_id, kind)"
        " VALUES ($1, $2, $3, 'agreed')",
        node,
        running.job.job_id,
        running.assignments[0].assignment_id,
    )

    # The SECURITY DEFINER fold wrote the standing the writer may only read.
    observations = await router_db.fetchval(
        "SELECT observations FROM node_standing WHERE node_id = $1 AND model = ''", node
    )
    assert observations == 1
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await router_db.execute("DELETE FROM reputation_events WHERE node_id = $1", node)


async def test_the_append_only_trigger_stays_on(
    admin: psycopg.Connection[tuple[object, ...]],
) -> None:
    enabled = admin.execute(
        "SELECT tgenabled FROM pg_trigger WHERE tgname = 'reputation_events_append_only'"
    ).fetchone()
    assert enabled == ("O",)


async def test_reports_read_every_report_view_and_no_table(
    ledger_settings: Settings, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    views = [
        str(name)
        for (name,) in admin.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'"
        ).fetchall()
    ]
    tables = [
        str(name)
        for (name,) in admin.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    ]
    assert "node_leaderboard" in views
    assert "jobs" in tables
    conn = await connect_as(ledger_settings, "reports")
    try:
        for view in views:
            await conn.fetch(f'SELECT * FROM "{view}" LIMIT 1')
        for table in tables:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f'SELECT 1 FROM "{table}" LIMIT 1')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO nodes (node_id) VALUES ('x')")
    finally:
        await conn.close()


@pytest.mark.parametrize("name", sorted(reports()))
def test_every_report_runs_as_the_reports_role(ledger_settings: Settings, name: str) -> None:
    as_reports = make_settings(database_url=role_dsn(ledger_settings, "reports"))
    params = {p: "a-node" for p in find_report(name).parameters}

    # The reports role sees what the operator sees, through the views alone.
    assert run_report(as_reports, name, params) == run_report(ledger_settings, name, params)


def test_no_report_view_shows_content(admin: psycopg.Connection[tuple[object, ...]]) -> None:
    used = {
        (str(table), str(column))
        for table, column in admin.execute(
            "SELECT table_name, column_name FROM information_schema.view_column_usage"
            " WHERE view_schema = 'public'"
        ).fetchall()
    }
    assert used, "the views read no column at all: the catalogue query is wrong"
    assert not used & CONTENT_COLUMNS


def test_the_owner_owns_every_ledger_object(
    ledger_settings: Settings, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    owner = roles.role_name(roles.database_of(ledger_settings), "owner")
    others = admin.execute(
        """
        SELECT relname FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relowner <> %(o)s::regrole
        UNION ALL
        SELECT proname FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace AND proowner <> %(o)s::regrole
        UNION ALL
        SELECT datname FROM pg_database
        WHERE datname = current_database() AND datdba <> %(o)s::regrole
        """,
        {"o": owner},
    ).fetchall()
    assert others == []


def test_nodes_and_clients_have_no_role(
    ledger_settings: Settings, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    database = roles.database_of(ledger_settings)
    names = {
        str(name)
        for (name,) in admin.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (f"{database}_",)
        ).fetchall()
    }
    assert names == {roles.role_name(database, kind) for kind in roles.ROLE_KINDS}


def test_every_role_needs_a_password(
    ledger_settings: Settings, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    """ops/postgres-auth puts the group's password lines above every other line."""
    rules = admin.execute(
        "SELECT type, user_name, auth_method FROM pg_hba_file_rules"
        " WHERE error IS NULL ORDER BY line_number"
    ).fetchall()
    group_rules = [r for r in rules if r[1] == [f"+{roles.GROUP_ROLE}"]]
    assert {(kind, method) for kind, _, method in group_rules} == {
        ("local", "scram-sha-256"),
        ("host", "scram-sha-256"),
    }
    assert rules[: len(group_rules)] == group_rules
    url = make_url(role_dsn(ledger_settings, "router"))
    wrong = url.set(password="not-the-password").render_as_string(hide_password=False)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong).close()
    bare = f"postgresql://{url.username}@{url.host}:{url.port}/{url.database}"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(bare, passfile="/dev/null").close()


@pytest.fixture
def throwaway() -> Iterator[Settings]:
    settings = make_settings()
    migrate.upgrade(settings)
    yield settings
    migrate.drop_database(settings)


async def test_revoking_a_role_locks_it_out_and_ends_its_sessions(throwaway: Settings) -> None:
    url = roles.issue_role(throwaway, "guard")
    session = await asyncpg.connect(url)
    assert await session.fetchval("SELECT current_user") == roles.role_name(
        roles.database_of(throwaway), "guard"
    )

    roles.revoke_role(throwaway, "guard")

    with pytest.raises(
        (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError)
    ):
        await asyncpg.connect(url)
    await eventually(session.is_closed, what="the revoked role's open session ends")
    # Issued again, it logs in with the new password only.
    renewed = roles.issue_role(throwaway, "guard")
    assert renewed != url
    conn = await asyncpg.connect(renewed)
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(url)


def test_upgrade_is_idempotent_and_drop_removes_the_roles() -> None:
    settings = make_settings()
    database = roles.database_of(settings)
    migrate.upgrade(settings)
    url = roles.issue_role(settings, "reports")
    migrate.upgrade(settings)  # again: grants and ownership unchanged, the password kept
    psycopg.connect(url).close()

    migrate.drop_database(settings)

    with psycopg.connect("postgresql://127.0.0.1:5432/postgres") as conn:
        left = conn.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (f"{database}_",)
        ).fetchall()
    assert left == []


def test_the_owner_role_migrates_its_own_ledger_and_no_other_role_may(throwaway: Settings) -> None:
    as_owner = make_settings(database_url=roles.issue_role(throwaway, "owner"))
    migrate.upgrade(as_owner)  # at head already: only the grants are applied again
    assert migrate.current(as_owner) == migrate.current(throwaway)

    as_router = make_settings(database_url=roles.issue_role(throwaway, "router"))
    with pytest.raises(SetupIncomplete, match="superuser"):
        roles.apply(as_router)


def test_a_role_of_a_ledger_never_migrated_is_a_setup_step() -> None:
    settings = make_settings()
    migrate.ensure_database(settings)
    try:
        with pytest.raises(SetupIncomplete, match="cortensor db upgrade"):
            roles.issue_role(settings, "router")
    finally:
        migrate.drop_database(settings)
