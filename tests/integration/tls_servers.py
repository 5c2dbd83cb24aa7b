"""A throwaway CA and private RabbitMQ, NATS and PostgreSQL servers that speak only TLS.

Each server runs on free loopback ports with its data in a temporary directory of its
own, so that a test can turn TLS on without touching the shared servers. Every server
asks for a client certificate signed by the same CA, so that a connection proves it
presents CORTENSOR_TLS_CERT as well as verifying the server against CORTENSOR_TLS_CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NATS_SERVER = Path(sys.executable).parent / "nats-server"
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBITMQ_USER = "cortensor"
POSTGRES_USER = "cortensor"


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Pki:
    """The files of a throwaway CA: its certificate, a server pair for 127.0.0.1 and
    localhost, a client pair, and the certificate of an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


class _Authority:
    """A self-signed CA that issues certificates valid for a day."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, name: str, *, server: bool) -> tuple[bytes, bytes]:
        """A certificate (PEM) and its key (PEM) for a server on 127.0.0.1 and localhost,
        or for a client named `name`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def make_pki(directory: Path) -> Pki:
    """Write a throwaway CA's files under `directory`. The client key is 0600, as libpq
    demands; PostgreSQL, which runs as another user, gets copies of its own files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = _Authority("cortensor test CA"), _Authority("some other CA")
    files: dict[str, bytes] = {"ca.pem": ca.cert.public_bytes(serialization.Encoding.PEM)}
    files["other-ca.pem"] = other.cert.public_bytes(serialization.Encoding.PEM)
    files["server.pem"], files["server.key"] = ca.issue("localhost", server=True)
    files["client.pem"], files["client.key"] = ca.issue(POSTGRES_USER, server=False)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / "client.key").chmod(0o600)
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
    )


def tls_handshake_ok(port: int, cafile: Path, pki: Pki) -> bool:
    """Whether a TLS handshake with the server on `port` succeeds, verifying it against
    `cafile` and presenting the client certificate (RabbitMQ and NATS' own TLS: the
    first thing on the wire; PostgreSQL negotiates first and is not asked here)."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def _wait(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, within: float
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited: {_tail(log)}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{process.args!r} not ready within {within:g} s: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group, then SIGKILL what is left after 30 s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class NatsServer:
    """nats-server with JetStream, listening only with TLS and asking for client certs."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.log = directory / "nats-server.log"
        self.config = directory / "nats-server.conf"
        self.config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'jetstream {{ store_dir: "{directory / "store"}" }}\n'
            "tls {\n"
            f'  cert_file: "{pki.server_cert}"\n'
            f'  key_file: "{pki.server_key}"\n'
            f'  ca_file: "{pki.ca}"\n'
            "  verify: true\n"
            "  timeout: 5\n"
            "}\n"
        )
        self.pki = pki
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [NATS_SERVER, "-c", self.config],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait(self._accepts, self.process, self.log, 20)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.makefile("rb").readline().startswith(b"INFO ")
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.process)


class PostgresServer:
    """A PostgreSQL 15 cluster of its own (initdb, pg_ctl) whose only TCP access is
    hostssl with a client certificate; run as the postgres user when this is root,
    since PostgreSQL refuses to run as root."""

    def __init__(self, pki: Pki) -> None:
        self.port = free_port()
        # Not under pytest's temporary root, which is private to this user.
        self.directory = Path(tempfile.mkdtemp(prefix="cortensor-tls-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.pki = pki
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """The URL of a database (created by `migrate.upgrade`) on this server."""
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/cortensor"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._owner else []
        done = subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr}{done.stdout}{_tail(self.log)}")

    def start(self) -> None:
        if self._owner:
            os.chown(self.directory, self._owner.pw_uid, self._owner.pw_gid)
        self._run(
            str(POSTGRES_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            POSTGRES_USER,
            "--auth=trust",
            "--no-sync",
        )
        for source, name in [
            (self.pki.server_cert, "server.pem"),
            (self.pki.server_key, "server.key"),
            (self.pki.ca, "ca.pem"),
        ]:
            target = self.data / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if self._owner:
                os.chown(target, self._owner.pw_uid, self._owner.pw_gid)
        # No plain TCP at all: a connection without TLS, or without a client
        # certificate of the CA, finds no pg_hba line and is refused.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n"
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.directory}'\n"
                "ssl = on\n"
                "ssl_cert_file = 'server.pem'\n"
                "ssl_key_file = 'server.key'\n"
                "ssl_ca_file = 'ca.pem'\n"
                "fsync = off\n"
            )
        self._run(
            str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "start"
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


class RabbitServer:
    """A second RabbitMQ node of its own (name, ports, data, cookie, configuration),
    with the TCP listener off and a TLS listener that asks for client certificates."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        self.port = free_port()
        self.password = uuid.uuid4().hex
        self.directory = directory
        self.log = directory / "rabbitmq.out"
        self.pki = pki
        self.node = f"cortensor-tls-{uuid.uuid4().hex[:8]}@localhost"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqps://{RABBITMQ_USER}:{self.password}@127.0.0.1:{self.port}/"

    def _environment(self) -> dict[str, str]:
        d = self.directory
        (d / "rabbitmq.conf").write_text(
            "listeners.tcp = none\n"
            f"listeners.ssl.default = 127.0.0.1:{self.port}\n"
            f"ssl_options.cacertfile = {self.pki.ca}\n"
            f"ssl_options.certfile = {self.pki.server_cert}\n"
            f"ssl_options.keyfile = {self.pki.server_key}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
            f"default_user = {RABBITMQ_USER}\n"
            f"default_pass = {self.password}\n"
        )
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(d),  # the Erlang cookie of this node, not the shared node's
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [RABBITMQ_SERVER],
                env=self._environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait(
            lambda: tls_handshake_ok(self.port, self.pki.ca, self.pki), self.process, self.log, 90
        )

    def stop(self) -> None:
        _stop(self.process)
