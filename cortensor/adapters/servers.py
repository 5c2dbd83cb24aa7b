"""Which server a failure says is down: the outage bookkeeping of routers and guards
(cortensor.protocol.outages) hears of PostgreSQL outages only through failed calls.

Only failures of the connection count: a refused value, a permission error or a bug is
no outage. A plain OSError (a refused connect) names no library, so the frames it was
raised through say whose connection it was.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import aiormq.exceptions
import asyncpg
import asyncpg.exceptions
import nats.errors
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from cortensor.errors import BadSetting

T = TypeVar("T")
log = structlog.get_logger(__name__)

_CONNECTION_ERRORS: tuple[tuple[str, tuple[type[BaseException], ...]], ...] = (
    (
        "postgres",
        (
            asyncpg.PostgresConnectionError,
            asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
            asyncpg.InterfaceError,  # a connection closed under the pool
        ),
    ),
    (
        "rabbitmq",
        (
            aiormq.exceptions.AMQPConnectionError,
            aiormq.exceptions.ChannelInvalidStateError,  # a channel closed with its connection
        ),
    ),
    (
        "nats",
        (
            nats.errors.ConnectionClosedError,
            nats.errors.NoServersError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.OutboundBufferLimitError,
            nats.errors.UnexpectedEOF,
        ),
    ),
)

_REFUSALS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # a wrong password, role
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ProbableAuthenticationError,
    nats.errors.AuthorizationError,
    ssl.SSLError,  # an untrusted certificate
)
"""A server that answered and refused: a setting to fix, never an outage to wait out."""

_LIBRARIES = (("asyncpg", "postgres"), ("aiormq", "rabbitmq"), ("aio_pika", "rabbitmq"))
_LIBRARIES_NATS = (("nats", "nats"),)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _raised_in(exc: BaseException) -> str | None:
    """The server whose client library the exception was raised through, innermost first."""
    modules = []
    tb = exc.__traceback__
    while tb is not None:
        modules.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    for module in reversed(modules):
        for prefix, server in (*_LIBRARIES, *_LIBRARIES_NATS):
            if module == prefix or module.startswith(f"{prefix}."):
                return server
    return None


def server_of(exc: BaseException) -> str | None:
    """'postgres', 'rabbitmq' or 'nats' when `exc` (or one of its causes) is a lost or
    refused connection to that server; None for anything else."""
    for link in _chain(exc):
        if isinstance(link, _REFUSALS):
            return None
        for server, kinds in _CONNECTION_ERRORS:
            if isinstance(link, kinds):
                return server
        if isinstance(link, OSError | asyncio.TimeoutError):
            raised_in = _raised_in(link)
            if raised_in is not None:
                return raised_in
    return None


START_WAIT_MAX_S = 5.0
"""Longest pause between two tries to reach a server at start."""


def _unreachable(exc: BaseException) -> bool:
    # A refused login or an untrusted certificate is a BadSetting: retrying can never
    # fix it, so it ends the process with its message.
    return not isinstance(exc, BadSetting) and server_of(exc) is not None


async def reach(server: str, connect: Callable[[], Awaitable[T]]) -> T:
    """`connect()`, tried again with jittered exponential back-off (tenacity) for as
    long as `server` cannot be reached, one log line per try; a refused login or any
    other failure is raised at once."""

    def tell(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "server unreachable at start; trying again",
            server=server,
            attempt=state.attempt_number,
            wait_s=round(wait, 2),
            error=repr(exc)[:200],
        )

    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_unreachable),
        wait=wait_random_exponential(multiplier=0.2, max=START_WAIT_MAX_S),
        before_sleep=tell,
        reraise=True,
    ):
        with attempt:
            return await connect()
    raise AssertionError("unreachable: tenacity retries until connect() returns or raises")
