"""Telling an outage from any other failure (cortensor.adapters.servers), waiting for a
server at start, and the node's short steps back to its broker."""

from __future__ import annotations

import ssl
from typing import Any

import aiormq.exceptions
import asyncpg
import nats.errors
import pytest

from cortensor.adapters.servers import reach, server_of
from cortensor.errors import BadSetting
from cortensor.services.node.celery_app import (
    RECONNECT_MAX_S,
    RECONNECT_START_S,
    RECONNECT_STEP_S,
    NodeConsumer,
)


@pytest.mark.parametrize(
    ("exc", "server"),
    [
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation"), "postgres"),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), "postgres"),
        (asyncpg.exceptions.AdminShutdownError("terminating"), "postgres"),
        (aiormq.exceptions.ConnectionClosed(320, "shutdown"), "rabbitmq"),
        (aiormq.exceptions.ChannelInvalidStateError("closed"), "rabbitmq"),
        (nats.errors.NoServersError(), "nats"),
        (nats.errors.ConnectionClosedError(), "nats"),
        (asyncpg.exceptions.UniqueViolationError("dup"), None),
        (asyncpg.exceptions.CharacterNotInRepertoireError("NUL"), None),
        (ValueError("a bug"), None),
        (ConnectionRefusedError("raised by no client library"), None),
        (ssl.SSLCertVerificationError("untrusted"), None),
        (aiormq.exceptions.AuthenticationError("ACCESS_REFUSED"), None),
        (asyncpg.exceptions.InvalidPasswordError("password authentication failed"), None),
        (nats.errors.AuthorizationError(), None),
    ],
)
def test_only_a_lost_connection_names_a_server(exc: BaseException, server: str | None) -> None:
    assert server_of(exc) == server


def test_a_wrapped_outage_is_found_along_its_causes() -> None:
    outer = RuntimeError("publish failed")
    outer.__cause__ = nats.errors.NoServersError()
    assert server_of(outer) == "nats"


async def test_reach_waits_for_a_server_that_is_down_then_connects() -> None:
    tries: list[int] = []

    async def connect() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")
        return "pool"

    assert await reach("postgres", connect) == "pool"
    assert len(tries) == 3


@pytest.mark.parametrize(
    "refusal",
    [
        BadSetting("RabbitMQ refused the login of router: check your credentials file"),
        asyncpg.exceptions.InvalidPasswordError("password authentication failed"),
        ValueError("a bug"),
    ],
)
async def test_reach_gives_up_at_once_on_what_no_retry_can_fix(refusal: Exception) -> None:
    tries: list[int] = []

    async def connect() -> str:
        tries.append(1)
        try:
            raise aiormq.exceptions.AuthenticationError("ACCESS_REFUSED")
        except aiormq.exceptions.AuthenticationError as exc:
            raise refusal from exc

    with pytest.raises(type(refusal)):
        await reach("rabbitmq", connect)
    assert tries == [1]


def test_a_node_reconnects_to_its_broker_on_short_steps_for_ever() -> None:
    seen: dict[str, Any] = {}

    class Connection:
        def ensure_connection(self, errback: Any, max_retries: Any, **steps: Any) -> Connection:
            errback(OSError("refused"), steps["interval_start"])  # logged, not raised
            seen.update(steps, max_retries=max_retries)
            return self

    consumer = NodeConsumer.__new__(NodeConsumer)
    conn = Connection()
    assert consumer.ensure_connected(conn) is conn
    assert seen["max_retries"] is None
    assert (seen["interval_start"], seen["interval_step"], seen["interval_max"]) == (
        RECONNECT_START_S,
        RECONNECT_STEP_S,
        RECONNECT_MAX_S,
    )
    assert RECONNECT_MAX_S <= 2.0
