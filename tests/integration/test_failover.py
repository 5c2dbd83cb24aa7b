"""Several servers in one URL setting, on the real servers: a client passes over a
server that does not answer and works through the next one (the cluster test, in
tests/chaos, kills nodes of a real cluster in the middle of a run)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.amqp_failover import FailoverConnection
from cortensor.adapters.principals.nats_auth import await_login
from cortensor.errors import BrokerUnavailable
from cortensor.settings import Settings
from cortensor.tools.credentials import with_login

pytestmark = [pytest.mark.rabbitmq, pytest.mark.nats]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def on_port(url: str, port: int) -> str:
    """`url` with its login, on another port of the same host."""
    parts = urlsplit(url)
    login = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{login}{parts.hostname}:{port}"))


async def test_an_amqp_client_passes_over_a_node_that_does_not_answer() -> None:
    admin = Settings()
    [url] = admin.amqp_urls
    dead = on_port(url, closed_port())
    queue_name = f"failover-{uuid.uuid4().hex[:10]}"

    connection = await amqp.connect(f"{dead},{url}")
    try:
        assert isinstance(connection, FailoverConnection)
        assert [u.port for u in connection.urls] == [urlsplit(dead).port, urlsplit(url).port]
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, exclusive=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"through the second node"), routing_key=queue_name
        )
        message = await queue.get(timeout=5)
        assert message is not None
        assert message.body == b"through the second node"
        await message.ack()
    finally:
        await connection.close()


async def test_no_node_answering_raises_the_connection_error() -> None:
    urls = ",".join(f"amqp://u:p@127.0.0.1:{closed_port()}/" for _ in range(2))

    with pytest.raises(ConnectionError):
        await amqp.connect(urls)


async def test_a_nats_client_passes_over_a_server_that_does_not_answer() -> None:
    admin = Settings()
    [url] = admin.nats_urls
    dead = on_port(url, closed_port())

    nc = await jetstream.connect(f"{dead},{url}", name="test-failover")
    try:
        assert nc.is_connected
        assert nc.connected_url is not None
        assert nc.connected_url.port == urlsplit(url).port
    finally:
        await nc.close()


async def test_a_login_check_on_a_cluster_passes_over_a_server_that_is_down() -> None:
    """`cortensor credentials` waits for every NATS server of a cluster to take a login;
    one that is down reads the users when it starts, and must not hold the command up
    (nats-py retries a refused first connect for ever)."""
    [url] = Settings().nats_urls
    servers = f"{on_port(url, closed_port())},{url}"
    user = urlsplit(url).username or ""

    async with asyncio.timeout(60):
        await await_login(servers, accepted=True)
        await await_login(with_login(servers, user, "not-the-password"), accepted=False)
    with pytest.raises(BrokerUnavailable, match="cannot reach any NATS server"):
        await await_login(
            on_port(url, closed_port()) + "," + on_port(url, closed_port()), accepted=True
        )
