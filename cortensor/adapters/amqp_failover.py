"""A robust AMQP connection over the nodes of a RabbitMQ cluster, tried in turn.

aio-pika's `connect_robust` takes one URL and reconnects to it for ever (an open
feature request upstream, mosquito/aio-pika#141), so a client of a cluster whose node
died would wait for that node. `FailoverConnection` is aio-pika's `RobustConnection`
with a list of URLs: every connection attempt, the first and each reconnection, takes
the next URL round the list, and everything else (channels, consumers and topology
restored after a reconnection, publisher confirms) is aio-pika's own.

Every node of a cluster serves every queue (quorum queues are replicated on all of
them, and a client on any node reaches the queue's leader through it), so the nodes are
interchangeable and round-robin is all the choice there is; kombu's failover strategy
for the nodes' Celery workers is round-robin too.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection, UnderlayConnection
from aio_pika.exceptions import AuthenticationError, ProbableAuthenticationError
from yarl import URL


class FailoverConnection(RobustConnection):
    """A `RobustConnection` that moves to the next of `urls` for each connection attempt.

    aio-pika clears `transport` before every attempt (and when the connection closes):
    that is where the next URL is taken, so the hook relies on no private name. The
    first attempt uses `urls[start]`.
    """

    def __init__(self, urls: Sequence[str], *, start: int = 0, **kwargs: Any) -> None:
        if not urls:
            raise ValueError("no AMQP URL to connect to")
        self._urls = [URL(url) for url in urls]
        self._turn = start - 1  # the first attempt's reset moves it to `start`
        self._resets = 0
        super().__init__(self._urls[start % len(self._urls)], **kwargs)

    @property
    def transport(self) -> UnderlayConnection | None:
        """The live connection to one node (None between attempts)."""
        return self._transport

    @transport.setter
    def transport(self, value: UnderlayConnection | None) -> None:
        # The first reset is the constructor's; each later one starts an attempt (or
        # follows a close, which the attempt after it then passes over).
        if value is None:
            self._resets += 1
            if self._resets > 1:
                self._turn += 1
                self.url = self._urls[self._turn % len(self._urls)]
        self._transport = value

    @property
    def urls(self) -> list[URL]:
        """The nodes, in the order they are tried."""
        return list(self._urls)


async def connect_failover(
    urls: Sequence[str], *, ssl_context: ssl.SSLContext | None = None
) -> AbstractRobustConnection:
    """A robust connection to the first of `urls` that answers, which later reconnects to
    the next ones in turn. A node that refuses the login ends it (the cluster shares its
    users); when none answers, the last node's error is raised."""
    failure: BaseException | None = None
    for start in range(len(urls)):
        connection = FailoverConnection(
            urls, start=start, loop=asyncio.get_running_loop(), ssl_context=ssl_context
        )
        try:
            await connection.connect()
        except (AuthenticationError, ProbableAuthenticationError):
            await connection.close()
            raise
        except (TimeoutError, ConnectionError, OSError) as exc:
            await connection.close()
            failure = exc
            continue
        return connection
    assert failure is not None
    raise failure
