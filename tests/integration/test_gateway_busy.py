"""The gateway when the network cannot answer: a namespace whose router queue holds one
job and that runs no router. The jobs the queue takes are never decided (504, no
verdict in time, the job id given to ask again); once the queue is full RabbitMQ
refuses the next job and the gateway answers 503 with Retry-After, as the `openai`
package sees it. The gateway runs as `cortensor gateway` on an issued gateway
credential."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.tools import credentials
from tests.conftest import make_settings

pytestmark = [pytest.mark.rabbitmq, pytest.mark.nats, pytest.mark.slow]

LIMIT = 1
"""The router queue's bound (quorum queues take at most one job past it)."""


@dataclass(frozen=True)
class Served:
    url: str
    key: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = make_settings(router_queue_max=LIMIT)
    asyncio.run(setup_brokers(settings))
    files = tmp_path_factory.mktemp("gateway-busy")
    try:
        gateway = credentials.issue(settings, "gateway", "gw", files / "gateway.json")
        alice = credentials.issue(settings, "client", "alice", files / "alice.json")
        port = _free_port()
        env = {**os.environ, "CORTENSOR_GATEWAY_WAIT_S": "0"}
        with (files / "gateway.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "cortensor"),
                    "--credentials",
                    str(gateway),
                    "gateway",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            _healthy(url, process, files / "gateway.log")
            yield Served(url, json.loads(alice.read_text())["api_key"])
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        credentials.revoke_namespace(settings)
        asyncio.run(teardown_brokers(settings))


def _healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the gateway exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the gateway did not come up: {log.read_text()}")


def test_no_verdict_is_504_and_a_full_queue_is_503(served: Served) -> None:
    refused: list[openai.InternalServerError] = []
    with openai.OpenAI(
        base_url=f"{served.url}/v1", api_key=served.key, max_retries=0, timeout=60
    ) as client:
        for i in range(LIMIT + 4):
            with pytest.raises(openai.InternalServerError) as caught:
                client.embeddings.create(
                    input=f"job {i}",
                    model="all-MiniLM-L6-v2",
                    # Time enough for RabbitMQ's confirm on a busy machine (a publish
                    # unconfirmed by the deadline is 503 broker_unavailable instead).
                    extra_headers={"x-cortensor-deadline-s": "2"},
                )
            refused.append(caught.value)
            if caught.value.status_code == 503:
                break
    *accepted, busy = refused
    seen = [(e.status_code, e.code, e.message) for e in refused]
    assert LIMIT <= len(accepted) <= LIMIT + 1, seen
    for timeout in accepted:
        assert (timeout.status_code, timeout.code) == (504, "no_verdict")
        job_id = timeout.response.headers["x-cortensor-job-id"]
        assert timeout.response.json()["cortensor"]["job_id"] == job_id
        assert job_id in timeout.message  # where to ask again
    assert (busy.status_code, busy.code) == (503, "network_busy")
    assert busy.response.headers["retry-after"] == "1"
    assert "busy" in busy.message
