"""Ledger fixtures shared by the integration tests that drive the router's and the
guard's ledger access directly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from cortensor.adapters.ledger import migrate
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.settings import Settings
from tests.conftest import make_settings


@pytest.fixture(scope="module")
async def router(ledger_settings: Settings) -> AsyncIterator[RouterLedger]:
    ledger = await RouterLedger.connect(ledger_settings.asyncpg_dsn)
    yield ledger
    await ledger.close()


@pytest.fixture(scope="module")
async def guard(ledger_settings: Settings) -> AsyncIterator[GuardLedger]:
    ledger = await GuardLedger.connect(ledger_settings.asyncpg_dsn)
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
    router = await RouterLedger.connect(own_database.asyncpg_dsn)
    guard = await GuardLedger.connect(own_database.asyncpg_dsn)
    yield Ledgers(router, guard)
    await guard.close()
    await router.close()
