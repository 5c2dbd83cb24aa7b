"""TLS for the connections to RabbitMQ, NATS and PostgreSQL, from the settings.

Setting `tls_ca` turns TLS on for every connection a process opens: each server's
certificate must chain to that CA and name the host the URL names (an IP address
in the URL must be in the certificate's subject alternative names). `tls_cert` and
`tls_key` are this process's client certificate, for servers that ask for one.

- AMQP (aio-pika and the node's Celery worker): the URL must be amqps://, the port
  RabbitMQ's TLS listener (5671 by default); an amqp:// URL with `tls_ca` set is
  refused rather than silently switched, since its port is the plain listener's.
- NATS: the context is handed to nats-py, which speaks TLS whatever the scheme
  (nats:// or tls://).
- PostgreSQL: `Settings.asyncpg_dsn` and `Settings.sqlalchemy_url` carry
  sslmode=verify-full and the files, so that asyncpg, psycopg and SQLAlchemy all
  verify the server and present the client certificate.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cortensor.errors import BadSetting

if TYPE_CHECKING:
    from cortensor.settings import Settings


def _check_files(settings: Settings) -> None:
    if settings.tls_ca is None and settings.tls_cert is not None:
        raise BadSetting("CORTENSOR_TLS_CERT needs CORTENSOR_TLS_CA, the servers' CA")
    if settings.tls_key is not None and settings.tls_cert is None:
        raise BadSetting("CORTENSOR_TLS_KEY is the key of CORTENSOR_TLS_CERT: set both")


def client_context(settings: Settings) -> ssl.SSLContext | None:
    """A context that verifies the servers against `tls_ca` and presents `tls_cert` when
    one is set; None when TLS is off (no `tls_ca`)."""
    _check_files(settings)
    if settings.tls_ca is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(settings.tls_ca))
        if settings.tls_cert is not None:
            context.load_cert_chain(
                str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise BadSetting(f"cannot load the TLS files (CORTENSOR_TLS_*): {exc}") from None
    return context


def amqp_url(settings: Settings) -> str:
    """The AMQP URL to connect to (a cluster's: several, comma-separated); BadSetting when
    TLS is on and a URL is not amqps://.

    Only the scheme is named in the message: the URL may hold a password.
    """
    for url in settings.amqp_urls:
        scheme = urlsplit(url).scheme
        if settings.tls_ca is not None and scheme != "amqps":
            raise BadSetting(
                f"CORTENSOR_TLS_CA turns TLS on, but CORTENSOR_AMQP_URL is {scheme}://: use"
                " amqps://host:port/ with the port of RabbitMQ's TLS listener (5671 by default)"
            )
    return settings.amqp_url


def broker_ssl(settings: Settings) -> dict[str, Any] | None:
    """Celery's `broker_use_ssl` (py-amqp's TLS options): verify the broker against
    `tls_ca`, present `tls_cert`; None when TLS is off.

    `server_hostname` None makes kombu fill in the URL's host, which turns py-amqp's
    hostname check on; without the key py-amqp would check the chain only.
    """
    _check_files(settings)
    if settings.tls_ca is None:
        return None
    options: dict[str, Any] = {
        "ca_certs": str(settings.tls_ca),
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": None,
    }
    if settings.tls_cert is not None:
        options["certfile"] = str(settings.tls_cert)
        if settings.tls_key is not None:
            options["keyfile"] = str(settings.tls_key)
    return options
