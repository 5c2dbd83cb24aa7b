"""Services wait for their servers: at start, by trying again while nothing answers;
afterwards, a robust RabbitMQ connection tries to reconnect every RECONNECT_INTERVAL_S."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.servers import reach
from tests.conftest import make_settings

pytestmark = pytest.mark.rabbitmq


async def test_a_robust_connection_reconnects_on_short_pauses() -> None:
    connection = await amqp.connect(make_settings().amqp_url)
    try:
        assert connection.reconnect_interval == amqp.RECONNECT_INTERVAL_S  # type: ignore[attr-defined]
        assert amqp.RECONNECT_INTERVAL_S <= 1.0
    finally:
        await connection.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("server", ["postgres", "rabbitmq", "nats"])
async def test_a_server_that_refuses_connections_is_waited_for_not_given_up_on(
    server: str,
) -> None:
    """What each client library raises when nothing listens is seen as that server's
    outage, so a service at start keeps trying (while a refused login ends it)."""
    port = _closed_port()
    connect: dict[str, Callable[[], Awaitable[object]]] = {
        "postgres": lambda: RouterLedger.connect(f"postgresql://nobody@127.0.0.1:{port}/none"),
        "rabbitmq": lambda: amqp.connect(f"amqp://nobody:x@127.0.0.1:{port}/"),
        "nats": lambda: jetstream.connect(f"nats://127.0.0.1:{port}", name="reconnect-test"),
    }
    tries: list[int] = []

    async def attempt() -> object:
        tries.append(1)
        return await connect[server]()

    with pytest.raises(TimeoutError):  # still trying when the test stops waiting
        await asyncio.wait_for(reach(server, attempt), timeout=4.0)
    # nats-py, told to reconnect for ever, keeps trying inside its first connect.
    assert len(tries) >= (1 if server == "nats" else 2)
