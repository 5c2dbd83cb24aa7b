"""What the TLS settings make of each connection's URL and options (no server: the
handshakes themselves are tests/integration/test_tls.py)."""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from cortensor.errors import BadSetting
from cortensor.settings import Settings
from cortensor.tls import amqp_url, broker_ssl, client_context

CA, CERT, KEY = Path("/pki/ca.pem"), Path("/pki/my cert.pem"), Path("/pki/my.key")


def _settings(**values: object) -> Settings:
    base: dict[str, object] = {
        "amqp_url": "amqps://u:p@broker.example:5671/",
        "database_url": "postgresql://ledger.example:5432/cortensor",
        "tls_ca": CA,
        "tls_cert": CERT,
        "tls_key": KEY,
    }
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def test_tls_off_leaves_every_connection_as_it_was() -> None:
    settings = _settings(
        amqp_url="amqp://127.0.0.1:5672/", tls_ca=None, tls_cert=None, tls_key=None
    )

    assert client_context(settings) is None
    assert broker_ssl(settings) is None
    assert amqp_url(settings) == "amqp://127.0.0.1:5672/"
    assert settings.asyncpg_dsn == "postgresql://ledger.example:5432/cortensor"


def test_an_amqp_url_without_tls_is_refused_once_tls_is_on() -> None:
    settings = _settings(amqp_url="amqp://u:secret@broker.example:5672/")

    with pytest.raises(BadSetting, match="amqps://") as refused:
        amqp_url(settings)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"tls_ca": None, "tls_key": None}, "needs CORTENSOR_TLS_CA"),
        ({"tls_cert": None}, "set both"),
    ],
)
def test_a_client_certificate_needs_a_ca_and_a_key_needs_its_certificate(
    values: dict[str, object], problem: str
) -> None:
    settings = _settings(**values)

    with pytest.raises(BadSetting, match=problem):
        client_context(settings)
    with pytest.raises(BadSetting, match=problem):
        broker_ssl(settings)


def test_celery_verifies_the_broker_by_name_and_presents_the_client_certificate() -> None:
    assert broker_ssl(_settings()) == {
        "ca_certs": str(CA),
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": None,
        "certfile": str(CERT),
        "keyfile": str(KEY),
    }


@pytest.mark.parametrize("url", ["asyncpg_dsn", "sqlalchemy_url"])
def test_the_ledger_urls_verify_the_server_and_name_the_files(url: str) -> None:
    query = parse_qs(urlsplit(getattr(_settings(), url)).query)

    assert query == {
        "sslmode": ["verify-full"],
        "sslrootcert": [str(CA)],
        "sslcert": [str(CERT)],
        "sslkey": [str(KEY)],
    }


def test_a_parameter_the_database_url_states_is_kept() -> None:
    settings = _settings(
        database_url="postgresql://ledger.example/cortensor?sslmode=verify-ca&application_name=x"
    )

    query = parse_qs(urlsplit(settings.asyncpg_dsn).query)

    assert (query["sslmode"], query["application_name"]) == (["verify-ca"], ["x"])
    assert query["sslrootcert"] == [str(CA)]
