"""A router's or guard's record of its outages (cortensor.services.outages.OutageLog)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import aiormq.exceptions
import asyncpg
import nats.errors
import pytest

from cortensor.adapters.memory.tables import ManualClock
from cortensor.protocol.outages import Outage, OutageWatch
from cortensor.services.outages import RETRY_CAP_S, OutageLog, pause_s


class Book:
    """An outage book that fails while told to."""

    def __init__(self) -> None:
        self.down = False
        self.rows: dict[tuple[str, datetime], Outage] = {}

    async def record_outages(self, seen_by: str, outages: Sequence[Outage]) -> None:
        if self.down:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        for o in outages:
            self.rows[(o.server, o.started_at)] = o


async def test_a_ledger_outage_is_recorded_once_the_ledger_is_back() -> None:
    clock = ManualClock(datetime(2026, 12, 3, tzinfo=UTC))
    book = Book()
    log = OutageLog(OutageWatch(clock), book, name="router")  # type: ignore[arg-type]
    assert await log.flush() is False  # nothing seen, nothing written
    book.down = True
    assert log.failed(asyncpg.exceptions.ConnectionDoesNotExistError("gone")) == "postgres"
    assert log.failed(ValueError("a bug")) is None
    clock.advance(5)
    with pytest.raises(asyncpg.exceptions.CannotConnectNowError):
        await log.flush()
    assert "postgres" in log.watch.down
    clock.advance(10)
    book.down = False
    assert await log.flush() is True
    assert log.watch.down == frozenset()
    [window] = book.rows.values()  # one window, however many sweeps failed meanwhile
    assert window.ongoing  # written while still open; closed by the next flush
    clock.advance(0.25)
    assert await log.flush() is False
    [window] = book.rows.values()
    assert not window.ongoing
    assert window.started_at == datetime(2026, 12, 3, tzinfo=UTC)
    assert window.ended_at == clock() - timedelta(seconds=0.25)
    assert await log.flush() is False
    assert log.watch.pending() == []


async def test_only_postgres_outages_are_noted_from_failed_calls() -> None:
    """A call on a channel that died with its connection may fail after the connection
    came back: RabbitMQ and NATS outages are their connections' callbacks' to note."""
    log = OutageLog(OutageWatch(ManualClock()), Book(), name="router")  # type: ignore[arg-type]
    assert log.failed(aiormq.exceptions.ChannelInvalidStateError("closed")) == "rabbitmq"
    assert log.failed(nats.errors.NoServersError()) == "nats"
    assert log.watch.down == frozenset()


async def test_a_broker_outage_is_written_open_and_then_closed() -> None:
    clock = ManualClock(datetime(2026, 12, 3, tzinfo=UTC))
    book = Book()
    watch = OutageWatch(clock)
    log = OutageLog(watch, book, name="guard")  # type: ignore[arg-type]
    watch.lost("nats")
    clock.advance(2)
    await log.flush()
    [seen] = book.rows.values()
    assert seen.ongoing
    clock.advance(13)
    watch.restored("nats")
    await log.flush()
    [ended] = book.rows.values()
    assert not ended.ongoing
    assert (ended.ended_at - ended.started_at).total_seconds() == 15


def test_pauses_while_a_server_is_down_stay_short() -> None:
    waits = [pause_s(n) for n in range(1, 40)]
    assert all(0 < w <= RETRY_CAP_S for w in waits)
    assert waits[0] <= 0.1
