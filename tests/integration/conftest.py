"""Ledger fixtures shared by the integration tests that drive the router's and the
guard's ledger access directly, logged in as the router's and the guard's roles."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from cortensor.adapters.ledger import migrate
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.settings import Settings
from tests.conftest import make_settings, role_dsn


@pytest.fixture(scope="module")
async def router(ledger_settings: Settings) -> AsyncIterator[RouterLedger]:
    ledger = await RouterLedger.connect(role_dsn(ledger_settings, "router"))
    yield ledger
    await ledger.close()


@pytest.fixture(scope="module")
async def guard(ledger_settings: Settings) -> AsyncIterator[GuardLedger]:
    ledger = await GuardLedger.connect(role_dsn(ledger_settings, "guard"))
    yield ledger
    await ledger.close()


@pytest.fixture
def own_database() -> Iterator[Settings]:
    """A ledger of this test's own, for the sweeps that act on every job in it."""
    settings = make_settings()
    migrate.upgrade(settings)
    yield settings
    migrate.drop_database(settings)


@dataclass
class Ledgers:
    router: RouterLedger
    guard: GuardLedger


@pytest.fixture
async def own(own_database: Settings) -> AsyncIterator[Ledgers]:
    router = await RouterLedger.connect(role_dsn(own_database, "router"))
    guard = await GuardLedger.connect(role_dsn(own_database, "guard"))
    yield Ledgers(router, guard)
    await guard.close()
    await router.close()
