"""Which server a failure says cannot be reached, told in one line a user can act on.

A command that cannot reach RabbitMQ, NATS or PostgreSQL says which, at what address (never
with the password the URL holds), and which setting names it:

    cannot reach RabbitMQ at 127.0.0.1:5672/: check CORTENSOR_AMQP_URL or your credentials file

The exception that tells is found along the chain of causes, so that the line is the same
whichever layer wrapped the library's error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal
from urllib.parse import urlsplit

import psycopg
import sqlalchemy.exc

from cortensor.adapters import servers
from cortensor.settings import Settings

Server = Literal["RabbitMQ", "NATS", "PostgreSQL"]

SETTING: dict[Server, str] = {
    "RabbitMQ": "CORTENSOR_AMQP_URL",
    "NATS": "CORTENSOR_NATS_URL",
    "PostgreSQL": "CORTENSOR_DATABASE_URL",
}
"""The variable that names each server (a credentials file's value wins over it)."""

_LOGIN_REFUSED = ("password authentication failed", "authorization violation", "access_refused")


def address(url: str) -> str:
    """host:port and path of a server URL, without its scheme or credentials; each of
    them, comma-separated, for a setting that names several servers."""
    return ", ".join(_address(one.strip()) for one in url.split(",") if one.strip())


def _address(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # not a number: say nothing rather than echo the URL
        port = ""
    return f"{host}{port}{parts.path}"


def url_of(server: Server, settings: Settings) -> str:
    """The URL the principal `settings` describes reaches `server` at."""
    match server:
        case "RabbitMQ":
            return settings.amqp_url
        case "NATS":
            return settings.nats_url
        case "PostgreSQL":
            return settings.database_url


def unreachable(server: Server, settings: Settings, *, login: bool = False) -> str:
    """The one line that says `server` cannot be reached (or refused the login)."""
    where = address(url_of(server, settings))
    said = (
        f"{server} at {where} refused the login" if login else f"cannot reach {server} at {where}"
    )
    return f"{said}: check {SETTING[server]} or your credentials file"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


_NAMES: dict[str, Server] = {"postgres": "PostgreSQL", "rabbitmq": "RabbitMQ", "nats": "NATS"}


def server_of(exc: BaseException) -> Server | None:
    """The server whose connection failed (cortensor.adapters.servers, which the outage
    bookkeeping uses too; and psycopg and SQLAlchemy, which the admin commands use);
    None when the chain of causes names no connection failure."""
    found = servers.server_of(exc)
    if found is not None:
        return _NAMES[found]
    for link in _chain(exc):
        if isinstance(link, psycopg.OperationalError | sqlalchemy.exc.OperationalError):
            return "PostgreSQL"
    return None


def login_refused(exc: BaseException) -> bool:
    """Whether the chain says the server answered and refused the login."""
    return any(any(s in str(link).lower() for s in _LOGIN_REFUSED) for link in _chain(exc))
