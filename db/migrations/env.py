"""Alembic environment of the ledger. The URL comes from the config that
cortensor.adapters.ledger.migrate builds from Settings; there is no alembic.ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from cortensor.adapters.ledger.tables import Base
from cortensor.errors import SetupIncomplete

# Any constant will do; it only has to be the same in every process that migrates.
_MIGRATION_LOCK = 0x636F7274656E73  # "cortens"

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise SetupIncomplete(
            "sqlalchemy.url is not set; migrate with `cortensor db upgrade`, which builds the"
            " configuration from the CORTENSOR_* settings"
        )
    return url


def run_migrations_offline() -> None:
    """Emit the migration SQL without connecting."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate over a plain connection, one process at a time."""
    engine = create_engine(_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                # Processes that start together (router, guard, tests) would otherwise
                # race to create the same tables; the lock is released at commit.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                )
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
