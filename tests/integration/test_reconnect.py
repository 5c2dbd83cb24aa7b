"""A robust RabbitMQ connection tries to reconnect every RECONNECT_INTERVAL_S."""

from __future__ import annotations

import pytest

from cortensor.adapters import amqp
from tests.conftest import make_settings

pytestmark = pytest.mark.rabbitmq


async def test_a_robust_connection_reconnects_on_short_pauses() -> None:
    connection = await amqp.connect(make_settings().amqp_url)
    try:
        assert connection.reconnect_interval == amqp.RECONNECT_INTERVAL_S  # type: ignore[attr-defined]
        assert amqp.RECONNECT_INTERVAL_S <= 1.0
    finally:
        await connection.close()
