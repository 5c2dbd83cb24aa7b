"""Fixtures shared by every test: isolated namespaces and ledgers on the real services.

Each module that needs services gets its own broker namespace (queues, exchanges,
subjects and streams all prefixed) and its own PostgreSQL database, migrated before
its tests and removed after them. A service that is down fails the test; nothing skips.

The session runs as the operator: CORTENSOR_CREDENTIALS names the admin's credentials
(ops/test sets it; else ~/.config/cortensor/admin.json, which ops/services writes), and
fleets and principals under test get credentials of their own.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from cortensor.adapters.ledger import migrate, roles
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.settings import Settings
from cortensor.tools.credentials import revoke_namespace

T = TypeVar("T")

ADMIN_CREDENTIALS = Path.home() / ".config" / "cortensor" / "admin.json"
"""The operator's credentials that ops/services writes."""


def pytest_configure(config: pytest.Config) -> None:
    """Run the session as the operator unless CORTENSOR_CREDENTIALS says otherwise."""
    os.environ.setdefault("CORTENSOR_CREDENTIALS", str(ADMIN_CREDENTIALS))


async def eventually(
    check: Callable[[], T | None] | Callable[[], Awaitable[T | None]],
    *,
    what: str,
    within: float = 15.0,
    interval: float = 0.02,
) -> T:
    """The first truthy value `check` returns (sync or async), polled every `interval`
    seconds: a test waits for the condition itself rather than for a fixed time. Fails
    with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(interval)


def unique_name(prefix: str) -> str:
    """A name no other test run uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The prepared models (ops/test prepares them; this only checks they are intact)."""
    from cortensor.tools.prepare import prepare_models

    directory = Settings().models_dir
    prepare_models(directory, log=lambda _: None)
    return directory


def run_cortensor(
    settings: Settings, *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """The `cortensor` command of this virtualenv, run against `settings`' namespace and
    ledger, as a user would run it."""
    env = {
        **os.environ,
        "CORTENSOR_NAMESPACE": settings.namespace,
        "CORTENSOR_DATABASE_URL": settings.database_url,
        "CORTENSOR_MODELS_DIR": str(settings.models_dir),
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "cortensor"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def make_settings(models_dir: Path | None = None, **overrides: object) -> Settings:
    """Settings for an isolated namespace and database."""
    base = Settings()
    values: dict[str, object] = {
        "namespace": unique_name("t"),
        "database_url": f"postgresql://127.0.0.1:5432/{unique_name('cortensor_t_')}",
        "models_dir": models_dir or base.models_dir,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


_ROLE_DSNS: dict[tuple[str, str], str] = {}


def role_dsn(settings: Settings, kind: roles.RoleKind) -> str:
    """A DSN that logs in to `settings`' ledger as its `kind` role (router, guard...), so
    that the ledger's tests run with the least privileges the services have. Issued
    once per database and role: issuing again would change the password under a pool
    that still opens connections with the old one."""
    key = (settings.database_url, kind)
    if key not in _ROLE_DSNS:
        _ROLE_DSNS[key] = roles.issue_role(settings, kind)
    return _ROLE_DSNS[key]


@pytest.fixture(scope="module")
def ledger_settings() -> Iterator[Settings]:
    """Settings with a freshly migrated ledger database of this module's own."""
    settings = make_settings()
    migrate.upgrade(settings)
    yield settings
    migrate.drop_database(settings)


@pytest.fixture(scope="module")
def broker_settings(ledger_settings: Settings) -> Iterator[Settings]:
    """Settings whose namespace has its broker topology applied (and a ledger)."""
    asyncio.run(setup_brokers(ledger_settings))
    yield ledger_settings
    revoke_namespace(ledger_settings)
    asyncio.run(teardown_brokers(ledger_settings))
