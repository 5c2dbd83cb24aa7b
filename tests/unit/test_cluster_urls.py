"""A cluster's servers in one setting: comma-separated URLs, the logins written into each,
and the AMQP connection that moves to the next node for each attempt."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.adapters.amqp_failover import FailoverConnection
from cortensor.adapters.principals.nats_auth import NatsServerFiles
from cortensor.errors import BadSetting
from cortensor.settings import Settings, login_refused, split_urls
from cortensor.tls import amqp_url
from cortensor.tools.credentials import _cluster_fields, _login_of, with_login

CLUSTER_AMQP = "amqp://127.0.0.1:5681/, amqp://127.0.0.1:5682/,amqp://127.0.0.1:5683/"
CLUSTER_NATS = "nats://127.0.0.1:4231,nats://127.0.0.1:4232,nats://127.0.0.1:4233"


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings here are the defaults and what each test gives, not the operator's."""
    monkeypatch.delenv("CORTENSOR_CREDENTIALS", raising=False)
    for name in ("AMQP_URL", "NATS_URL", "STATE_DIR", "RABBITMQ_NODE", "STREAM_REPLICAS"):
        monkeypatch.delenv(f"CORTENSOR_{name}", raising=False)


def settings(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def test_a_single_url_is_a_list_of_one() -> None:
    s = settings()

    assert s.amqp_urls == ["amqp://127.0.0.1:5672/"]
    assert s.nats_urls == ["nats://127.0.0.1:4223"]
    assert s.stream_replicas == 1
    assert s.rabbitmq_node == ""


def test_a_cluster_names_every_server_in_order() -> None:
    s = settings(amqp_url=CLUSTER_AMQP, nats_url=CLUSTER_NATS, stream_replicas=3)

    assert s.amqp_urls == [f"amqp://127.0.0.1:{p}/" for p in (5681, 5682, 5683)]
    assert s.nats_urls == [f"nats://127.0.0.1:{p}" for p in (4231, 4232, 4233)]


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("amqp_url", "", "CORTENSOR_AMQP_URL is empty"),
        ("nats_url", " , ", "CORTENSOR_NATS_URL is empty"),
        ("amqp_url", "amqp://a:5672/,b:5672", "'b:5672' is not a URL"),
        ("nats_url", "nats://u:secret@a:4222,u:secret@b", "'b' is not a URL"),
    ],
)
def test_a_list_that_is_not_urls_is_refused_without_its_password(
    field: str, value: str, said: str
) -> None:
    # BadSetting, as pydantic reports it: a ValueError.
    with pytest.raises(ValueError, match=re.escape(said)) as refused:
        settings(**{field: value})

    assert "secret" not in str(refused.value)


@pytest.mark.parametrize("replicas", [0, 6])
def test_stream_replicas_are_between_one_and_five(replicas: int) -> None:
    with pytest.raises(ValueError, match="stream_replicas"):
        settings(stream_replicas=replicas)


def test_with_login_writes_the_login_into_every_url() -> None:
    logged = with_login(CLUSTER_AMQP, "cortensor-admin", "p/w")

    urls = split_urls(logged)
    assert urls == [f"amqp://cortensor-admin:p%2Fw@127.0.0.1:{p}/" for p in (5681, 5682, 5683)]
    assert _login_of(logged) == ("cortensor-admin", "p%2Fw")
    # A login already there is replaced, not added to.
    assert split_urls(with_login(logged, "other", "x"))[2] == "amqp://other:x@127.0.0.1:5683/"


@given(st.lists(st.integers(min_value=1, max_value=65535), min_size=1, max_size=5))
def test_with_login_keeps_one_url_per_server(ports: list[int]) -> None:
    url = ",".join(f"nats://127.0.0.1:{p}" for p in ports)

    logged = split_urls(with_login(url, "u", "pw"))

    assert logged == [f"nats://u:pw@127.0.0.1:{p}" for p in ports]


def test_a_refused_login_names_the_first_server_and_no_password() -> None:
    url = with_login(CLUSTER_NATS, "n1", "hunter2")

    message = str(login_refused("NATS", url, None))

    assert "127.0.0.1:4231" in message
    assert "n1" in message
    assert "hunter2" not in message


def test_tls_needs_every_node_on_amqps(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    mixed = settings(amqp_url="amqps://a:5671/,amqp://b:5672/", tls_ca=ca)
    secure = settings(amqp_url="amqps://a:5671/,amqps://b:5671/", tls_ca=ca)

    with pytest.raises(BadSetting, match="amqps://"):
        amqp_url(mixed)
    assert amqp_url(secure) == "amqps://a:5671/,amqps://b:5671/"


def test_only_a_clusters_admin_file_names_its_files_node_and_replicas(tmp_path: Path) -> None:
    single = settings()
    cluster = settings(state_dir=tmp_path, rabbitmq_node="cortensor-1@localhost", stream_replicas=3)

    assert _cluster_fields(single) == {}
    assert _cluster_fields(cluster) == {
        "state_dir": str(tmp_path),
        "rabbitmq_node": "cortensor-1@localhost",
        "stream_replicas": 3,
    }


def test_every_server_of_a_cluster_reloads_the_users(tmp_path: Path) -> None:
    files = NatsServerFiles(tmp_path)
    for name in ("n2.pid", "n1.pid", "n3.pid"):
        (tmp_path / name).write_text("1\n")

    assert [p.name for p in files.pid_files] == ["n1.pid", "n2.pid", "n3.pid"]


async def test_each_connection_attempt_takes_the_next_node() -> None:
    urls = [f"amqp://u:p@127.0.0.1:{p}/" for p in (5681, 5682, 5683)]
    connection = FailoverConnection(urls, start=1, loop=asyncio.get_running_loop())
    tried = []
    for _ in range(4):  # what aio-pika does before every attempt
        connection.transport = None
        tried.append(connection.url.port)

    assert tried == [5682, 5683, 5681, 5682]
    assert "p@" not in str(connection)  # aio-pika masks the password it logs
