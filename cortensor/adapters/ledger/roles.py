"""The ledger's PostgreSQL login roles: one per operator principal, each with the least
it needs, so that a stolen router or guard credential cannot rewrite history.

Roles are cluster-wide and a server may hold many ledgers (a test run makes dozens), so
each database has its own four, named after it: `<db>_owner` owns every ledger object
and runs the migrations; `<db>_router` and `<db>_guard` read and write the operational
tables, may only INSERT (and SELECT) reputation events and own nothing, so they can
neither UPDATE, DELETE nor TRUNCATE events nor ALTER the table to disable its
append-only trigger; `<db>_reports` may SELECT the report views and nothing else (the
views run with their owner's rights). Nodes and clients have no role at all.

Every role is a member of the NOLOGIN group `cortensor_principals`, which pg_hba.conf
makes authenticate by password (`ops/postgres-auth`). A role is NOLOGIN until a
credential is issued (`issue_role`), and again once it is revoked (`revoke_role`).

`apply` runs after the Alembic migrations (`cortensor db upgrade`), idempotently: it
creates what is missing, hands every object to the owner (also for ledgers migrated
before these roles existed) and grants again, so tables added by a later migration are
covered as soon as it runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from cortensor.errors import BadSetting, LedgerUnavailable, SetupIncomplete
from cortensor.settings import Settings

RoleKind = Literal["owner", "router", "guard", "reports"]
ROLE_KINDS: tuple[RoleKind, ...] = get_args(RoleKind)

GROUP_ROLE = "cortensor_principals"
"""The group whose members pg_hba.conf makes log in with a password (ops/postgres-auth)."""

WRITERS: tuple[RoleKind, ...] = ("router", "guard")

WRITABLE_TABLES = (
    "nodes",
    "jobs",
    "assignments",
    "results",
    "verdicts",
    "refusals",
    "outages",
)
"""Tables the router and the guard read and write (SELECT, INSERT, UPDATE; never
DELETE or TRUNCATE: nothing in the ledger is deleted by its writers)."""

APPEND_ONLY_TABLES = ("reputation_events",)
"""Tables the writers may only INSERT into and SELECT from."""

READ_ONLY_TABLES = ("node_standing", "node_keys")
"""Tables the writers read: standings are folded by a SECURITY DEFINER trigger (so a
writer cannot set a node's trust by hand), keys are bound by the operator's credential
command."""

PUBLIC_FUNCTIONS = ("cortensor_score",)
"""Pure functions anyone connected may call (the router ranks nodes with it, the report
views compute with it). Every other function is the owner's: PUBLIC loses EXECUTE."""

MIGRATION_LOCK = 0x636F7274656E73  # "cortens"
"""The advisory lock that migrations (db/migrations/env.py) and `apply` take in turn."""

_SCRAM_ITERATIONS = 4096
_PASSWORD_BYTES = 32
_MAX_IDENTIFIER = 63


def role_name(database: str, kind: RoleKind) -> str:
    """The login role of principal `kind` on ledger `database`."""
    name = f"{database}_{kind}"
    if len(name.encode()) > _MAX_IDENTIFIER:
        raise BadSetting(
            f"the ledger database name {database!r} is too long for its role names"
            f" ({name!r} exceeds PostgreSQL's {_MAX_IDENTIFIER} bytes); choose a shorter"
            " name in CORTENSOR_DATABASE_URL"
        )
    return name


def database_of(settings: Settings) -> str:
    """The ledger database that `settings` name."""
    name = _url(settings).database
    if not name:
        raise BadSetting(
            f"CORTENSOR_DATABASE_URL names no database ({settings.database_url});"
            " end it with one, e.g. postgresql://127.0.0.1:5432/cortensor"
        )
    return name


def _url(settings: Settings) -> URL:
    return make_url(settings.asyncpg_dsn)


def _conninfo(url: URL, database: str) -> str:
    return url.set(drivername="postgresql", database=database).render_as_string(hide_password=False)


@contextmanager
def _connect(settings: Settings, database: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    url = _url(settings)
    try:
        conn = psycopg.connect(_conninfo(url, database), autocommit=True)
    except psycopg.OperationalError as exc:
        raise LedgerUnavailable(
            f"cannot reach PostgreSQL at {url.set(database=None).render_as_string()}: {exc}"
        ) from exc
    with conn:
        yield conn


def _is_superuser(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def _create_role(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    """CREATE ROLE ... NOLOGIN unless it exists; a concurrent creation counts as existing."""
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
        return
    statement = sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name))
    try:
        with conn.transaction():  # a savepoint when the caller's transaction is open
            conn.execute(statement)
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        # Another process created it between our look and our CREATE.
        return


def ensure_roles(conn: psycopg.Connection[tuple[object, ...]], database: str) -> None:
    """Create the group role and `database`'s four roles if missing (NOLOGIN: a role
    logs in only once `issue_role` gives it a password)."""
    _create_role(conn, GROUP_ROLE)
    for kind in ROLE_KINDS:
        name = role_name(database, kind)
        _create_role(conn, name)
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(GROUP_ROLE), sql.Identifier(name))
        )


_OWN_EVERYTHING = """
DO $$
DECLARE
    o record;
BEGIN
    FOR o IN
        SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                              WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END AS kind,
               format('%I.%I', n.nspname, c.relname) AS name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
          AND c.relowner <> {owner}::regrole
          -- A sequence that a column owns follows its table.
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.objid = c.oid AND d.classid = 'pg_class'::regclass
                            AND d.deptype IN ('a', 'i'))
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I', o.kind, o.name, {owner});
    END LOOP;
    FOR o IN
        SELECT p.oid::regprocedure AS name
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.proowner <> {owner}::regrole
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO %I', o.name, {owner});
    END LOOP;
END
$$
"""
"""Hand every table, view, sequence and function of the ledger to its owner role."""


def _grants(database: str, schema_objects: dict[str, str]) -> list[sql.SQL | sql.Composed]:
    """The GRANT and REVOKE statements of `database`'s roles, given its objects (name to
    relkind or 'f' for functions)."""
    writers = sql.SQL(", ").join(sql.Identifier(role_name(database, k)) for k in WRITERS)
    everyone = sql.SQL(", ").join(sql.Identifier(role_name(database, k)) for k in ROLE_KINDS)
    # Never the owner: revoking from it would take its own rights, which foreign-key
    # checks and the SECURITY DEFINER fold run with.
    grantees = sql.SQL(", ").join(
        sql.Identifier(role_name(database, k)) for k in ROLE_KINDS if k != "owner"
    )
    reports = sql.Identifier(role_name(database, "reports"))
    db = sql.Identifier(database)
    statements: list[sql.SQL | sql.Composed] = [
        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, everyone),
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(everyone),
    ]
    for name, kind in sorted(schema_objects.items()):
        target = sql.Identifier(name)
        if kind == "f":
            # `name` is a regprocedure's text: already quoted as PostgreSQL needs.
            function = sql.SQL(name)
            statements.append(sql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM PUBLIC").format(function))
            if name.split("(")[0] in PUBLIC_FUNCTIONS:
                statements.append(
                    sql.SQL("GRANT EXECUTE ON FUNCTION {} TO PUBLIC").format(function)
                )
            continue
        statements.append(sql.SQL("REVOKE ALL ON {} FROM PUBLIC, {}").format(target, grantees))
        if kind in ("v", "m"):
            statements.append(sql.SQL("GRANT SELECT ON {} TO {}").format(target, reports))
        elif kind == "S":
            statements.append(sql.SQL("GRANT USAGE, SELECT ON {} TO {}").format(target, writers))
        elif name in WRITABLE_TABLES:
            statements.append(
                sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(target, writers)
            )
        elif name in APPEND_ONLY_TABLES:
            statements.append(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(target, writers))
        elif name in READ_ONLY_TABLES:
            statements.append(sql.SQL("GRANT SELECT ON {} TO {}").format(target, writers))
    return statements


_OBJECTS = """
SELECT c.relname::text, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
UNION ALL
SELECT p.oid::regprocedure::text, 'f'
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public'
"""


def apply(settings: Settings) -> None:
    """Create `settings`' ledger roles, give the owner role every ledger object and the
    database, and grant each role what it needs; idempotent.

    Needs a superuser (the operator's credential). Run by anyone else (the owner role
    migrating its own ledger), only the grants are applied, on what that user owns.
    """
    database = database_of(settings)
    owner = role_name(database, "owner")
    with _connect(settings, database) as conn, conn.transaction():
        # Processes that migrate together would otherwise grant on the same rows at once.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        superuser = _is_superuser(conn)
        if superuser:
            ensure_roles(conn, database)
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(database), sql.Identifier(owner)
                )
            )
            conn.execute(sql.SQL(_OWN_EVERYTHING).format(owner=sql.Literal(owner)))
        elif conn.execute("SELECT current_user").fetchone() != (owner,):
            raise SetupIncomplete(
                f"the ledger's roles can be set up only by a PostgreSQL superuser or {owner};"
                " run `cortensor db upgrade` with the operator's credential"
            )
        objects = {str(name): str(kind) for name, kind in conn.execute(_OBJECTS).fetchall()}
        for statement in _grants(database, objects):
            conn.execute(statement)


def drop_roles(conn: psycopg.Connection[tuple[object, ...]], database: str) -> None:
    """Drop `database`'s roles (after the database itself: they own nothing elsewhere)."""
    for kind in ROLE_KINDS:
        conn.execute(
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role_name(database, kind)))
        )


def scram_verifier(password: str) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 7677), with a
    fresh salt, computed here so that the password itself never reaches the server or
    its statement log."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _require_role(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
        raise SetupIncomplete(
            f"PostgreSQL has no role {name}; run `cortensor db upgrade` with the operator's"
            " credential first"
        )


def issue_role(admin: Settings, kind: RoleKind) -> str:
    """Give `kind`'s role of the admin's ledger a fresh password and LOGIN; returns the
    database URL that logs in as it (same server and database, password included).

    Issuing again replaces the password: the previous URL stops working for new sessions.
    """
    database = database_of(admin)
    name = role_name(database, kind)
    password = secrets.token_urlsafe(_PASSWORD_BYTES)
    with _connect(admin, database) as conn:
        _require_role(conn, name)
        conn.execute(
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(scram_verifier(password))
            )
        )
    url = make_url(admin.database_url).set(username=name, password=password)
    return url.render_as_string(hide_password=False)


def revoke_role(admin: Settings, kind: RoleKind) -> None:
    """Take `kind`'s role of the admin's ledger off the network: NOLOGIN, no password,
    and its open sessions ended."""
    database = database_of(admin)
    name = role_name(database, kind)
    with _connect(admin, database) as conn:
        _require_role(conn, name)
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(name)))
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
