"""The one settings object. Every process builds it once and passes it down."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from cortensor.errors import BadSetting

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")

REVALIDATE_DEADLINE_S = 120.0
"""Default of Settings.revalidate_deadline_s, for code that runs without settings."""


def _default_models_dir() -> Path:
    return Path.home() / ".local" / "share" / "cortensor" / "models"


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "share" / "cortensor"


CREDENTIAL_FIELDS = (
    "namespace",
    "amqp_url",
    "nats_url",
    "nats_inbox_prefix",
    "database_url",
    "principal",
    "principal_kind",
    "key_file",
    "api_key",
    "state_dir",
    "rabbitmq_node",
    "stream_replicas",
)
"""What a credentials file (`cortensor credentials issue`) may set: it wins over the
environment, since a principal is its credential."""


def read_credentials(path: Path) -> dict[str, Any]:
    """The settings a credentials file holds; BadSetting when it cannot be used."""
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise BadSetting(
            f"cannot read the credentials file {path}: {exc.strerror or exc};"
            " check CORTENSOR_CREDENTIALS or --credentials"
        ) from None
    except ValueError:
        raise BadSetting(f"the credentials file {path} is not JSON") from None
    if not isinstance(raw, dict):
        raise BadSetting(f"the credentials file {path} must hold a JSON object")
    values = {k: v for k, v in raw.items() if k in CREDENTIAL_FIELDS and v is not None}
    if "kind" in raw:
        values["principal_kind"] = raw["kind"]
    if "name" in raw:
        values["principal"] = raw["name"]
    if isinstance(values.get("key_file"), str) and not Path(values["key_file"]).is_absolute():
        values["key_file"] = str(path.parent / values["key_file"])
    return values


def split_urls(value: str) -> list[str]:
    """The servers a URL setting names: one URL, or several separated by commas (the
    nodes of a cluster, tried in turn), each stripped of surrounding spaces."""
    return [url.strip() for url in value.split(",") if url.strip()]


def login_refused(server: str, url: str, credentials: Path | None) -> BadSetting:
    """The error of a login that `server` refused: one line that says whom it refused
    and where the login came from, never the password."""
    parts = urlsplit(split_urls(url)[0] if split_urls(url) else url)
    who = parts.username or "an anonymous user"
    where = parts.hostname or "?"
    if parts.port:
        where += f":{parts.port}"
    source = f"the credentials file {credentials}" if credentials else "the CORTENSOR_* URLs"
    return BadSetting(
        f"{server} at {where} refused the login of {who}; check {source}"
        " (revoked? issued for another namespace or server?)"
    )


class _CredentialsSource(PydanticBaseSettingsSource):
    """Settings from the credentials file named by `credentials` or CORTENSOR_CREDENTIALS."""

    def __init__(self, settings_cls: type[BaseSettings], init: InitSettingsSource) -> None:
        super().__init__(settings_cls)
        self._init = init

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        path = self._init.init_kwargs.get("credentials") or os.environ.get("CORTENSOR_CREDENTIALS")
        if not path:
            return {}
        return {"credentials": path, **read_credentials(Path(path))}


class Settings(BaseSettings):
    """Configuration of every Cortensor process, read from `CORTENSOR_*` variables."""

    # An invalid value is not repeated in the error: a URL may hold a password.
    model_config = SettingsConfigDict(
        env_prefix="CORTENSOR_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the credentials file, then `CORTENSOR_*` variables."""
        assert isinstance(init_settings, InitSettingsSource)
        credentials = _CredentialsSource(settings_cls, init_settings)
        return init_settings, credentials, env_settings, dotenv_settings, file_secret_settings

    credentials: Path | None = None
    """A principal's credentials file (`cortensor credentials issue`); what it holds wins
    over the environment."""
    principal: str = ""
    """The name the credentials were issued to: a node's id, a client's name."""
    principal_kind: str = ""
    """node, client, gateway, router, guard, reports or admin."""
    amqp_url: str = "amqp://127.0.0.1:5672/"
    """RabbitMQ: one URL, or one per node of a cluster separated by commas (amqp_urls)."""
    nats_url: str = "nats://127.0.0.1:4223"
    """NATS: one URL, or one per server of a cluster separated by commas (nats_urls)."""
    nats_inbox_prefix: str = "_INBOX"
    """Prefix of this principal's NATS reply subjects: its own, so that NATS permissions
    keep others' replies (JetStream acks, fetched messages) from it."""
    database_url: str = "postgresql://127.0.0.1:5432/cortensor"
    key_file: Path | None = None
    """A node's Ed25519 private key (PEM), which signs its results and heartbeats."""
    api_key: SecretStr | None = None
    """A client's key for the HTTP gateway."""
    tls_ca: Path | None = None
    """CA certificate that the servers' certificates must chain to; setting it turns TLS
    on for AMQP, NATS and PostgreSQL."""
    tls_cert: Path | None = None
    """This process's client certificate, for servers that ask for one."""
    tls_key: Path | None = None
    """The private key of tls_cert."""
    state_dir: Path = Field(default_factory=_default_state_dir)
    """Where `ops/services` keeps the project's nats-server (configuration, users, store);
    `cortensor credentials` edits its users there, so it runs on that host. A cluster's
    admin credentials (`ops/cluster`) name the cluster's own."""
    rabbitmq_node: str = ""
    """The RabbitMQ node `cortensor credentials` manages users on (`rabbitmqctl -n`; a
    cluster's users are on every node); empty: rabbitmqctl's default node."""
    stream_replicas: int = Field(default=1, ge=1, le=5)
    """Replicas of each JetStream stream and of the guard's consumer that `cortensor
    brokers setup` asks for: 1 on a single server, 3 on a 3-server cluster."""
    retention_h: float = Field(default=24.0, gt=0)
    """Hours a job's inputs and outputs stay in the ledger and the streams after the job
    is decided; then only their sha256 remains (docs/design.md)."""
    models_dir: Path = Field(default_factory=_default_models_dir)
    namespace: str = "cortensor"
    """Prefix of every exchange, queue, subject and stream, so that fleets can share servers."""

    log_level: str = "INFO"
    """Level of the services' logs: DEBUG adds a line per job."""
    log_format: Literal["console", "json"] = "console"
    """The services' log lines: console (key=value, for people) or json (one JSON object
    per line, with job_id, node_id and assignment_id as fields where known)."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Where a router, guard or node serves Prometheus metrics (/metrics): unset, none;
    0, a free port (logged at start); under honcho the Procfile gives each process its
    own $PORT when this is set (README, Metrics)."""
    metrics_addr: str = "0.0.0.0"
    """The address the metrics endpoint listens on."""

    connect_timeout_s: float = Field(default=5.0, gt=0)
    """How long a client (the SDK, a command that is not a service) keeps trying to reach
    RabbitMQ or NATS at start before it says which one it cannot reach. Once connected,
    a client rides through outages: a job is published again until its deadline."""

    # Jobs. The limits on a job's input are part of its schema (cortensor.schemas).
    assignment_timeout_s: float = 10.0
    """How long a node has for one assignment before it is re-routed to another node."""
    audio_timeout_factor: float = 0.5
    """Extra assignment time per second of audio, on top of assignment_timeout_s."""
    shard_inputs: int = Field(default=32, ge=1)
    """Most texts in one part of an embed or classify job; longer jobs are split into
    shards that different nodes run at the same time."""
    shard_prompts: int = Field(default=4, ge=1)
    """Most prompts in one part of a generate job: each prompt is decoded token by token,
    so parts are small and run on different nodes at once. A conversation is never cut."""
    token_timeout_s: float = Field(default=0.05, ge=0)
    """generate: extra assignment time per token asked (max_tokens of each answer)."""
    chunk_s: float = Field(default=30.0, gt=1.0)
    """Longest part of a transcribe job: longer audio is cut at silences into chunks
    that different nodes transcribe at the same time."""
    chunk_min_s: float = Field(default=15.0, gt=0)
    """Shortest chunk worth cutting so that more nodes share a file. Whisper reads 30 s
    windows, so a short chunk costs nearly as much as a full one."""
    max_audio_s: float = Field(default=900.0, gt=0)
    """Longest audio a transcribe job may carry."""
    whisper_batch_size: int = Field(default=8, ge=0, le=64)
    """Whisper windows a node decodes at once (faster-whisper's batched pipeline) in audio
    longer than one window; 0 decodes them one after another. The router assumes its
    own value for the nodes when it decides how many parts a file becomes: a part is
    then at most this many windows (`chunk_s` each) long."""

    # Nodes.
    heartbeat_interval_s: float = 1.0
    node_ttl_s: float = 5.0
    node_prefetch: int = 4
    node_threads: int = 1
    inference_threads: int = 1

    # Trust.
    probe_interval_s: float = Field(default=1.0, gt=0)
    """Mean gap between the known-answer probes of a node on probation (gaps are random,
    exponential: cortensor.protocol.probing.ProbeSchedule)."""
    quarantine_probe_interval_s: float = Field(default=5.0, gt=0)
    """Mean gap between the probes of a quarantined node, to earn its way back."""
    quarantine_probe_max_s: float = Field(default=120.0, gt=0)
    """Cap of that mean gap, which doubles with each probe it fails in a row."""
    active_probe_interval_s: float = Field(default=300.0, gt=0)
    """Mean gap between the probes of an active node, mixed with its real jobs."""
    probe_pool_size: int = Field(default=256, ge=1)
    """Recent verified jobs per model that the router keeps as probes."""
    probe_pool_refresh_s: float = Field(default=10.0, gt=0)
    """How often the router reads the probe pool and the probes' outcomes again."""
    probes_file: Path | None = None
    """The prepared probes that start a network without traffic (router side only); by
    default probes.json beside the models directory, never inside it, as nodes read that."""
    revalidate_deadline_s: float = Field(default=REVALIDATE_DEADLINE_S, gt=0)
    """Time allowed to re-validate a result accepted unreplicated, once its node failed
    a spot-check."""

    # Router and guard.
    router_prefetch: int = 64
    router_batch: int = 32
    """Most jobs a router records and routes together."""
    router_queue_max: int = Field(default=5000, ge=1)
    """Most jobs the router's queue holds; past it RabbitMQ refuses new jobs and clients
    get Busy. Size it as the fleet's job rate times the shortest deadline it promises
    (docs/design.md, Overload); `cortensor brokers setup` applies it."""
    sweep_interval_s: float = 0.25
    registry_refresh_s: float = 1.0
    routing_temperature: float = 1.0
    guard_batch: int = 64
    retry_base_s: float = Field(default=0.5, gt=0)
    """First back-off before a message whose handling failed for a reason that may pass
    (cortensor.errors.Disposition.REQUEUE) is handed back; it doubles with each delivery."""
    retry_cap_s: float = Field(default=10.0, gt=0)
    """Longest back-off; the queue's delivery limit then dead-letters the message."""

    # The HTTP gateway (`cortensor gateway`).
    gateway_host: str = "127.0.0.1"
    """The address the gateway listens on (`--host` wins)."""
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    """The gateway's port (`--port` wins)."""
    gateway_wait_s: float = Field(default=10.0, ge=0)
    """How long past a job's deadline the gateway waits for its verdict before it answers
    504; the job may still be decided later (GET /v1/jobs/{id} tells)."""

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise BadSetting(
                "namespace must start with a lower-case letter and hold only a-z, 0-9, '_' or '-'"
                " (at most 40 characters)"
            )
        return value

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _blank_port(cls, value: Any) -> Any:
        """An empty CORTENSOR_METRICS_PORT (as the Procfile passes when none is asked
        for) means no metrics endpoint."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("amqp_url", "nats_url")
    @classmethod
    def _check_urls(cls, value: str, info: ValidationInfo) -> str:
        urls = split_urls(value)
        setting = f"CORTENSOR_{str(info.field_name).upper()}"
        if not urls:
            raise BadSetting(f"{setting} is empty: give a server's URL (several: comma-separated)")
        for url in urls:
            if "://" not in url:
                where = url.rsplit("@", 1)[-1]  # never the password
                raise BadSetting(
                    f"{setting}: {where!r} is not a URL; write scheme://host:port"
                    " (several servers: comma-separated)"
                )
        return value

    @property
    def amqp_urls(self) -> list[str]:
        """Every RabbitMQ node amqp_url names, in the order they are tried."""
        return split_urls(self.amqp_url)

    @property
    def nats_urls(self) -> list[str]:
        """Every NATS server nats_url names (nats-py takes the list and fails over)."""
        return split_urls(self.nats_url)

    @property
    def probes_path(self) -> Path:
        """Where `cortensor models prepare` writes the prepared probes and routers read them."""
        return self.probes_file or self.models_dir.with_name("probes.json")

    @property
    def sqlalchemy_url(self) -> str:
        """The ledger URL in the form SQLAlchemy and Alembic use (psycopg 3 driver)."""
        return self._ledger_url("postgresql+psycopg://")

    @property
    def asyncpg_dsn(self) -> str:
        """The ledger URL in the form asyncpg (and psycopg) take."""
        return self._ledger_url("postgresql://")

    def _ledger_url(self, scheme: str) -> str:
        """database_url under `scheme`; with TLS on (tls_ca set), plus the libpq parameters
        that asyncpg and psycopg both read: sslmode=verify-full (the server's certificate
        chains to tls_ca and names the URL's host) and the client certificate. A parameter
        the URL already states is kept."""
        url = re.sub(r"^postgres(ql)?(\+\w+)?://", scheme, self.database_url)
        if self.tls_ca is None:
            return url
        base, _, query = url.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.setdefault("sslmode", "verify-full")
        params.setdefault("sslrootcert", str(self.tls_ca))
        if self.tls_cert is not None:
            params.setdefault("sslcert", str(self.tls_cert))
        if self.tls_key is not None:
            params.setdefault("sslkey", str(self.tls_key))
        return f"{base}?{urlencode(params, safe='/')}"
