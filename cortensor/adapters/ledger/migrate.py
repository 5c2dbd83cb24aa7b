"""Create the ledger database and apply its Alembic migrations, configured in code.

There is no alembic.ini: the configuration is built from `Settings`, so every process
and test migrates the database its settings name. From a shell:
`python -c "from cortensor.settings import Settings; from cortensor.adapters.ledger.migrate import
upgrade; upgrade(Settings())"`.
"""

from __future__ import annotations

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from cortensor.adapters.ledger import roles
from cortensor.errors import BadSetting, LedgerUnavailable
from cortensor.paths import resource
from cortensor.settings import Settings

_MAINTENANCE_DATABASES = ("postgres", "template1")


def alembic_config(settings: Settings) -> Config:
    """An Alembic configuration for the ledger that `settings` names."""
    config = Config()
    config.set_main_option("script_location", str(resource("db", "migrations")))
    config.set_main_option("path_separator", "os")
    # Config is a ConfigParser: a literal '%' (percent-encoded password) must be doubled.
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return config


def _target(settings: Settings) -> tuple[URL, str]:
    url = make_url(settings.sqlalchemy_url)
    if not url.database:
        raise BadSetting(
            f"CORTENSOR_DATABASE_URL names no database ({url.render_as_string()});"
            " end it with one, e.g. postgresql://127.0.0.1:5432/cortensor"
        )
    return url, url.database


def _maintenance_connection(url: URL) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection to a maintenance database on the ledger's server."""
    last_error: psycopg.OperationalError | None = None
    for maintenance in _MAINTENANCE_DATABASES:
        conninfo = url.set(drivername="postgresql", database=maintenance).render_as_string(
            hide_password=False
        )
        try:
            return psycopg.connect(conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            last_error = exc
    raise LedgerUnavailable(
        f"cannot reach PostgreSQL at {url.set(database=None).render_as_string()}: {last_error}"
    ) from last_error


def _database_exists(conn: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    )


def ensure_database(settings: Settings) -> bool:
    """Create the ledger database if it is missing; True if this call created it.

    Connects to a maintenance database (`postgres`, else `template1`) on the same server.
    A concurrent creation by another process counts as already present.
    """
    url, name = _target(settings)
    with _maintenance_connection(url) as conn:
        if _database_exists(conn, name):
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            # Another process created it between our look and our CREATE; the catalog's
            # unique index, not CREATE DATABASE's own check, may be what notices.
            return False
        return True


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Create the database if needed, migrate it up to `revision`, then set up its
    login roles and their grants (cortensor.adapters.ledger.roles).

    Idempotent; concurrent callers serialize on an advisory lock (see env.py).
    """
    ensure_database(settings)
    command.upgrade(alembic_config(settings), revision)
    roles.apply(settings)


def downgrade(settings: Settings, revision: str) -> None:
    """Migrate the ledger down to `revision` ("base" removes every ledger object)."""
    command.downgrade(alembic_config(settings), revision)


def current(settings: Settings) -> str | None:
    """The revision the ledger is at; None if unmigrated or the database does not exist."""
    engine = create_engine(settings.sqlalchemy_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        # psycopg reports a missing database like any failed connection; ask the server.
        url, name = _target(settings)
        with _maintenance_connection(url) as maintenance:
            if not _database_exists(maintenance, name):
                return None
        raise LedgerUnavailable(f"cannot reach the ledger: {exc.orig}") from exc
    finally:
        engine.dispose()


def drop_database(settings: Settings) -> None:
    """Drop the ledger database, closing its sessions, and its login roles (for tests
    and throwaway fleets)."""
    url, name = _target(settings)
    with _maintenance_connection(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        roles.drop_roles(conn, name)
