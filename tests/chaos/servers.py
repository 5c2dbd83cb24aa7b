"""Private PostgreSQL, RabbitMQ and NATS servers that a chaos test may stop, kill and
restart: plain TCP on free loopback ports, each with its data in a directory of its own
that outlives a restart, so that the shared servers of every other test stay untouched.

Every server has the same verbs: `start()`, `stop()` (a clean shutdown), `kill9()`
(SIGKILL to the server and every process under it, as a crash would), `restart()`, and
`await down_for(seconds, hard=...)`, which takes it away for at least that long and
returns the seconds it was unreachable (start-up included). `pids()` lists its
processes, for the memory sampler.

The RabbitMQ node gets a `rabbitmqctl` of its own (`RabbitServer.ctl_dir`, a script that
names the node and its Erlang cookie): with that directory first on PATH,
`cortensor credentials` (which runs `rabbitmqctl`) issues users on the private node.
The NATS server reads its users from `<state>/nats/auth.conf` and writes its pid to
`<state>/nats/nats.pid`, as `ops/services` lays out the shared one, so a Settings whose
`state_dir` is `NatsServer.state_dir` issues NATS users on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tests.integration.tls_servers import NATS_SERVER, POSTGRES_BIN, free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
POSTGRES_USER = "cortensor"
"""The private PostgreSQL's superuser, the operator's login there."""


class Server(Protocol):
    """What every private server offers a scenario."""

    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def kill9(self) -> None: ...
    def pids(self) -> list[int]: ...


def restart(server: Server) -> None:
    """A clean stop, then start again on the same data."""
    server.stop()
    server.start()


async def down_for(server: Server, seconds: float, *, hard: bool = False) -> float:
    """Take `server` away (SIGKILL when `hard`, else a clean stop) for `seconds`, start it
    again, and return how long it was unreachable, start-up included."""
    began = time.monotonic()
    await asyncio.to_thread(server.kill9 if hard else server.stop)
    await asyncio.sleep(max(seconds - (time.monotonic() - began), 0))
    await asyncio.to_thread(server.start)
    return time.monotonic() - began


def _ppids() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(root: int) -> list[int]:
    """`root` and every process below it (read from /proc), if `root` still runs."""
    parents = _ppids()
    if root not in parents:
        return []
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += frontier
    return tree


def kill_tree(root: int) -> None:
    """SIGKILL `root` and every process below it, at once, as a crash of the host's
    process would leave them."""
    for pid in process_tree(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def _wait(
    ready: Callable[[], bool],
    alive: Callable[[], bool],
    what: str,
    log: Path,
    within: float,
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited while starting: {_tail(log)}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {within:g} s: {_tail(log)}")


def _reap(process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class NatsServer:
    """The project's nats-server (the virtualenv's 2.15) with JetStream fsyncing before
    every ack (`sync_interval: always`) and the authorization file `cortensor
    credentials` maintains, as brokers/nats-server.conf configures the shared one."""

    name = "nats"

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.state_dir = directory
        self.directory = directory / "nats"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = self.directory / "nats.log"
        self.config = self.directory / "nats.conf"
        self.config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'server_name: "chaos-{uuid.uuid4().hex[:8]}"\n'
            "jetstream {\n"
            f'  store_dir: "{self.directory / "store"}"\n'
            "  sync_interval: always\n"
            "  max_file_store: 2GB\n"
            "}\n"
            'include "auth.conf"\n'
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, without a login."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (auth.conf must exist: `credentials.bootstrap_admin` writes
        it) and wait until it greets a client."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [NATS_SERVER, "-c", self.config, "-P", self.directory / "nats.pid"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process
        _wait(self._greets, lambda: process.poll() is None, "nats-server", self.log, 30)

    def _greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.makefile("rb").readline().startswith(b"INFO ")
        except OSError:
            return False

    def stop(self) -> None:
        """A clean shutdown (SIGTERM)."""
        _reap(self.process)

    def kill9(self) -> None:
        """SIGKILL, as a crash: acknowledged writes must survive it (fsync)."""
        if self.process is not None and self.process.poll() is None:
            kill_tree(self.process.pid)
            self.process.wait(timeout=10)

    def pids(self) -> list[int]:
        """The server's process."""
        return [self.process.pid] if self.process and self.process.poll() is None else []


class PostgresServer:
    """A PostgreSQL 15 cluster of its own (initdb, pg_ctl) on a free port, its ledger
    roles logging in by password as `ops/postgres-auth` makes the shared server do;
    run as the postgres user when this is root, since PostgreSQL refuses root."""

    name = "postgresql"

    def __init__(self) -> None:
        self.port = free_port()
        # Not under pytest's temporary root, which is private to this user.
        self.directory = Path(
            subprocess.run(
                ["mktemp", "-d", "/tmp/cortensor-chaos-pg-XXXXXX"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._owner:
            os.chown(self.directory, self._owner.pw_uid, self._owner.pw_gid)

    def url(self, database: str) -> str:
        """The operator's URL of `database` on this server."""
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._owner else []
        done = subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr}{done.stdout}{_tail(self.log)}")
        return done

    def _init(self) -> None:
        self._run(
            str(POSTGRES_BIN / "initdb"),
            *("-D", str(self.data), "-U", POSTGRES_USER, "--auth=trust", "--no-sync"),
        )
        (self.data / "pg_hba.conf").write_text(
            "local all +cortensor_principals scram-sha-256\n"
            "host all +cortensor_principals 127.0.0.1/32 scram-sha-256\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            # fsync off: a killed server loses nothing the kernel holds; only a crash of
            # the whole machine would, and no scenario makes one.
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.directory}'\n"
                "fsync = off\n"
                "max_connections = 200\n"
            )

    def start(self) -> None:
        """initdb on first start, then pg_ctl start (recovering after a kill)."""
        if not self.data.exists():
            self._init()
        self._run(
            str(POSTGRES_BIN / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.log), "-w", "-t", "120", "start"),
        )

    def _postmaster(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def stop(self) -> None:
        """A fast shutdown (sessions ended, a clean checkpoint)."""
        if self._postmaster() is not None:
            self._run(str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")

    def kill9(self) -> None:
        """SIGKILL the postmaster and every backend: the next start recovers from WAL."""
        pid = self._postmaster()
        if pid is None:
            return
        kill_tree(pid)
        deadline = time.monotonic() + 10
        while process_tree(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """The postmaster and its backends."""
        pid = self._postmaster()
        return process_tree(pid) if pid else []

    def destroy(self) -> None:
        """Stop at once and remove the cluster's files."""
        if self._postmaster() is not None:
            self._run(
                str(POSTGRES_BIN / "pg_ctl"),
                *("-D", str(self.data), "-m", "immediate", "stop"),
                check=False,
            )
        shutil.rmtree(self.directory, ignore_errors=True)


class RabbitServer:
    """A RabbitMQ node of its own (name, ports, data, Erlang cookie), plain AMQP on a
    free loopback port; its users are made with its own `rabbitmqctl` (`ctl_dir`)."""

    name = "rabbitmq"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"cortensor-chaos-{uuid.uuid4().hex[:8]}@localhost"
        self.log = directory / "rabbitmq.out"
        cookie = directory / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            # No guest: the only users are those `cortensor credentials` makes.
            f"default_user = bootstrap-{uuid.uuid4().hex[:8]}\n"
            f"default_pass = {secrets.token_hex(16)}\n"
            "disk_free_limit.absolute = 50MB\n"
        )
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")
        self.ctl_dir = directory / "bin"
        self.ctl_dir.mkdir(exist_ok=True)
        ctl = self.ctl_dir / "rabbitmqctl"
        ctl.write_text(
            "#!/bin/sh\n"
            "# rabbitmqctl of the private chaos node: its name and its Erlang cookie.\n"
            f"export HOME='{directory}' RABBITMQ_CONF_ENV_FILE='{directory}/rabbitmq-env.conf'\n"
            f"exec '{RABBITMQ_BIN / 'rabbitmqctl'}' -n '{self.node}' \"$@\"\n"
        )
        ctl.chmod(0o755)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's AMQP URL, without a login."""
        return f"amqp://127.0.0.1:{self.port}/"

    def _environment(self) -> dict[str, str]:
        d = self.directory
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(d),  # the Erlang cookie of this node, not the shared node's
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run this node's rabbitmqctl."""
        return subprocess.run(
            [str(self.ctl_dir / "rabbitmqctl"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        """Start the node and wait until it has finished booting (it opens its port
        before it takes logins)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [RABBITMQ_BIN / "rabbitmq-server"],
                env=self._environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process
        _wait(self._listens, lambda: process.poll() is None, "rabbitmq-server", self.log, 120)
        # Right after a kill the CLI may find the node not yet registered with epmd
        # ("not running at all") and give up at once: ask again while it boots.
        deadline = time.monotonic() + 120
        while (done := self.ctl("await_startup", "--timeout", "60", timeout=90)).returncode:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ did not boot: {done.stderr}{_tail(self.log)}")
            time.sleep(1)

    def _listens(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """A clean shutdown (SIGTERM to the node's process group)."""
        _reap(self.process, timeout=60)

    def kill9(self) -> None:
        """SIGKILL the Erlang VM and its helpers."""
        if self.process is not None and self.process.poll() is None:
            kill_tree(self.process.pid)
            self.process.wait(timeout=10)

    def pids(self) -> list[int]:
        """The node's processes (the Erlang VM and its helpers)."""
        return process_tree(self.process.pid) if self.process else []
