"""The `cortensor` command line (typer: typed options, help text and shell completion)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, cast
from uuid import UUID

import structlog
import typer
from pydantic import TypeAdapter, ValidationError
from typer.core import TyperGroup
from typer.exceptions import TyperException

from cortensor.adapters.principals.grants import Kind
from cortensor.catalog import DEFAULT_MAX_TOKENS
from cortensor.errors import (
    EXIT_NO,
    BadInput,
    BadSetting,
    BrokerUnavailable,
    CortensorError,
    LedgerUnavailable,
    NoVerdictYet,
    SetupIncomplete,
    UnknownJob,
    exit_code,
)
from cortensor.paths import ROOT, checkout_path
from cortensor.protocol.intake import explain
from cortensor.schemas import DEFAULT_DEADLINE_S, DEFAULT_TOP_K, JobRequest, NodeId, Verdict
from cortensor.services.node.faults import FaultMode
from cortensor.services.node.identity import HwChoice
from cortensor.settings import Settings
from cortensor.tools.reports import console


class _Handled(TyperGroup):
    """The command group every command runs under: an error that ends a command is
    printed as one line and turned into the exit status of cortensor.errors.EXIT_CODE,
    the same for every command."""

    def invoke(self, ctx: Any) -> Any:  # typer's click Context, a private type
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            raise  # the command chose its status, or typer reports a usage error
        except Exception as exc:
            told = _unreachable(exc)
            if told is not None:  # a server that is down is not a bug: one line says which
                exc = told
            elif not isinstance(exc, CortensorError):  # not raised on purpose: a bug
                err.print(traceback.format_exc(), markup=False)
            err.print("[red]error:[/red] ", end="")
            err.print(str(exc) or type(exc).__name__, markup=False)
            raise typer.Exit(exit_code(exc)) from exc


def _unreachable(exc: BaseException) -> CortensorError | None:
    """The one-line error that names the server `exc` says cannot be reached (or that
    refused the login) and the setting to check; None when it says no such thing."""
    from cortensor.adapters import reach

    if isinstance(exc, CortensorError) and not isinstance(
        exc, BrokerUnavailable | LedgerUnavailable
    ):
        return None  # raised on purpose with its own message (a refused login names whose)
    server = reach.server_of(exc)
    if server is None:
        return None
    try:
        settings = _settings()
    except BadSetting:
        return None
    if reach.login_refused(exc):
        return BadSetting(reach.unreachable(server, settings, login=True))
    line = reach.unreachable(server, settings)
    return LedgerUnavailable(line) if server == "PostgreSQL" else BrokerUnavailable(line)


app = typer.Typer(
    cls=_Handled, help="Cortensor: verified inference on a network of untrusted nodes."
)
brokers_app = typer.Typer(help="Broker topology.")
db_app = typer.Typer(help="The PostgreSQL ledger.")
models_app = typer.Typer(help="Model preparation.")
schemas_app = typer.Typer(help="JSON Schemas of the messages.")
submit_app = typer.Typer(help="Submit jobs.")
reputation_app = typer.Typer(help="Node reputation.")
credentials_app = typer.Typer(
    help="Issue and revoke principals' credentials (as the admin, on the servers' host)."
)
for sub, name in [
    (brokers_app, "brokers"),
    (db_app, "db"),
    (models_app, "models"),
    (schemas_app, "schemas"),
    (submit_app, "submit"),
    (reputation_app, "reputation"),
    (credentials_app, "credentials"),
]:
    app.add_typer(sub, name=name)

out = console()
err = console(stderr=True)
SCHEMAS_DIR = ROOT / "docs" / "schemas"
"""Where a checkout keeps the schemas: the default of `schemas write`."""


def _configure_logging() -> None:
    """Logs to stderr at CORTENSOR_LOG_LEVEL: key=value lines, or with
    CORTENSOR_LOG_FORMAT=json one JSON object per line (the standard library's records
    too), carrying the context bound with structlog.contextvars (job_id, node_id,
    assignment_id) as fields."""
    settings = _settings()
    level = logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO)
    stamps: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    renderer: Any
    if settings.log_format == "json":
        # Plain traceback text, never frames' locals: those hold job inputs.
        stamps.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        # Plain tracebacks: rich's would print every frame's locals (job inputs among
        # them) into the logs, and block the event loop for a second rendering them.
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        named = [structlog.stdlib.add_logger_name, *stamps]  # a library's record: its logger
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=named)
        )
        logging.captureWarnings(True)  # warnings too, as records of logger py.warnings
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamps, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _expose_metrics(settings: Settings, process: str) -> None:
    """Serve /metrics when --metrics-port or CORTENSOR_METRICS_PORT is set (0: a free
    port); the port is logged."""
    from cortensor.metrics import serve_metrics

    wanted = settings.metrics_port if _metrics_port is None else _metrics_port
    if wanted is None:
        return
    try:
        port = serve_metrics(wanted, settings.metrics_addr)
    except OSError as exc:
        raise BadSetting(
            f"metrics port {wanted} (--metrics-port or CORTENSOR_METRICS_PORT): cannot listen"
            f" there ({exc.strerror or exc}); choose a free port, or 0 for any"
        ) from exc
    structlog.get_logger("cortensor.metrics").info(
        "metrics served", process=process, addr=settings.metrics_addr, port=port, path="/metrics"
    )


_credentials: Path | None = None
"""The file of the global --credentials option (else CORTENSOR_CREDENTIALS applies)."""
_metrics_port: int | None = None
"""The global --metrics-port option (else CORTENSOR_METRICS_PORT applies)."""


@app.callback()
def _global_options(
    credentials: Annotated[
        Path | None,
        typer.Option(
            help="The principal's credentials file (`cortensor credentials issue`); default:"
            " CORTENSOR_CREDENTIALS. What it holds wins over CORTENSOR_* variables.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Where a router, guard or node serves /metrics (0: a free port); wins"
            " over CORTENSOR_METRICS_PORT. The Procfile passes honcho's $PORT.",
        ),
    ] = None,
) -> None:
    """Cortensor: verified inference on a network of untrusted nodes."""
    global _credentials, _metrics_port
    _credentials = credentials
    _metrics_port = metrics_port
    # Until a service configures logging, what the libraries log (aio-pika's failed
    # connection attempts, nats-py's errors) is not printed: a command says in one line
    # what went wrong.
    logging.lastResort = logging.NullHandler()


def _settings() -> Settings:
    try:
        if _credentials is not None:
            return Settings(credentials=_credentials)
        return Settings()
    except ValidationError as exc:
        raise BadSetting(f"bad CORTENSOR_* setting: {explain(exc)}") from exc


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def _serve(
    run: Callable[[asyncio.Event], Awaitable[None]], settings: Settings, process: str
) -> None:
    """Run a service until SIGINT or SIGTERM, then let it stop cleanly; its metrics are
    served meanwhile when CORTENSOR_METRICS_PORT asks for them."""
    _configure_logging()
    _expose_metrics(settings, process)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    _run(main())


@brokers_app.command("setup")
def brokers_setup() -> None:
    """Declare exchanges, queues and JetStream streams (idempotent)."""
    from cortensor.adapters.provision import setup_brokers

    settings = _settings()
    for line in _run(setup_brokers(settings)):
        out.print(f"  {line}", markup=False)
    out.print(f"[green]broker topology applied[/green] (namespace {settings.namespace})")


@brokers_app.command("teardown")
def brokers_teardown(
    yes: bool = typer.Option(
        False, "--yes", help="Delete: the jobs, assignments and verdicts held go with them."
    ),
) -> None:
    """Delete the namespace's queues (its nodes' too), exchanges and streams, and revoke
    its principals. The ledger is left as it is."""
    from cortensor.adapters.principals import rabbit
    from cortensor.adapters.provision import teardown_brokers
    from cortensor.adapters.topology import Topology
    from cortensor.tools.credentials import revoke_namespace

    settings = _settings()
    if not yes:
        raise BadInput(
            f"this deletes every queue, exchange and stream of namespace {settings.namespace}"
            " and what they hold, and revokes its principals: run again with --yes"
        )
    prefix = Topology(settings.namespace).node_queue("", "").name
    nodes = [q for q in rabbit.queues(node=settings.rabbitmq_node) if q.startswith(prefix)]
    _run(teardown_brokers(settings, node_queues=nodes))
    gone = revoke_namespace(settings)
    out.print(
        f"[green]namespace {settings.namespace} torn down[/green]: {len(nodes)} node queues,"
        f" {len(gone)} principals revoked"
    )


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Create the ledger database if missing and migrate it."""
    from cortensor.adapters.ledger import migrate

    settings = _settings()
    created = migrate.ensure_database(settings)
    migrate.upgrade(settings, revision)
    note = "created and migrated" if created else "migrated"
    out.print(f"[green]ledger {note}[/green] to {migrate.current(settings)}")


@models_app.command("prepare")
def models_prepare(force: bool = typer.Option(False, help="Redo every variant.")) -> None:
    """Export and quantize the models into the models directory, with a sha256 manifest."""
    try:
        from cortensor.tools.prepare import prepare_models
    except ImportError as exc:
        raise SetupIncomplete(f"{exc}; install the `prepare` extra (ops/install does)") from exc
    settings = _settings()
    manifest = prepare_models(
        settings.models_dir,
        probes_path=settings.probes_path,
        force=force,
        log=lambda m: out.print(f"  {m}"),
    )
    for v in manifest.variants:
        out.print(f"  {v.name} {v.variant}: {', '.join(v.hw_classes)} ({len(v.files)} files)")
    out.print(f"[green]models ready[/green] in {settings.models_dir}")


@schemas_app.command("write")
def schemas_write(
    directory: Annotated[
        Path | None, typer.Option(help="Default: docs/schemas/ of the checkout.")
    ] = None,
    check: bool = typer.Option(False, help="Fail if the files differ instead of writing."),
) -> None:
    """Write the JSON Schema of every message under docs/schemas/."""
    from cortensor.schemas import json_schemas

    if directory is None:  # outside a checkout there is no docs/ to write into
        directory = checkout_path("docs", "schemas")
    stale = []
    for name, schema in json_schemas().items():
        text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        path = directory / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not check:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if check and stale:
        err.print(f"[red]stale schemas:[/red] {', '.join(stale)}; run `cortensor schemas write`")
        raise typer.Exit(EXIT_NO)
    out.print(f"schemas {'checked' if check else 'written'} in {directory}")


node_app = typer.Typer(help="Run an inference node, or make its key.")
app.add_typer(node_app, name="node")


@node_app.command("keygen")
def node_keygen(
    key: Annotated[Path, typer.Option(help="Where to write the private key (PEM, 0600).")],
) -> None:
    """Make a node's Ed25519 key pair; print the public key (base64) to have the node's
    credentials issued with. An existing file is never replaced."""
    from cortensor.adapters.keyfile import generate_key

    public = generate_key(key)
    err.print(f"private key written to {key}; public key:")
    out.print(base64.b64encode(public).decode("ascii"), markup=False)


@node_app.callback(invoke_without_command=True)
def node(
    ctx: typer.Context,
    hw_class: Annotated[str, typer.Option(help="auto, cpu-int8, cpu-fp32, ...")] = "auto",
    node_id: Annotated[str | None, typer.Option(help="Default: host name + process name.")] = None,
    fault: Annotated[
        FaultMode | None,
        typer.Option(
            help="Be dishonest: random, lazy or noisy answers; colluding (same wrong answer"
            " as its --fault-group); slow (answers after the deadline); intermittent (random"
            " on a share of jobs); crash (the process dies mid-task); probe-aware (random"
            " answers on every job it cannot recognise as a probe); adaptive (the same, only"
            " when no peer's result shows within --fault-window-ms); sybil (probe-aware with"
            " its --fault-group's shared answer, back under a fresh --node-id once caught)."
        ),
    ] = None,
    fault_rate: Annotated[
        float | None,
        typer.Option(
            help="Share of jobs the fault strikes. Default: 0.1 for intermittent, else 1."
        ),
    ] = None,
    fault_group: Annotated[
        str | None,
        typer.Option(
            help="With --fault colluding or sybil: nodes of one group give the same wrong answers."
        ),
    ] = None,
    fault_window_ms: Annotated[
        float | None,
        typer.Option(
            help="With --fault adaptive: how long to wait for a peer (default 50); with a"
            " coordinated sybil: for a fellow member (default 500)."
        ),
    ] = None,
    fault_trust_after: Annotated[
        int | None,
        typer.Option(
            help="With --fault adaptive: cheat only after this many checked valid results"
            " in a row (the router trusts a node alone from 30). Default: 0."
        ),
    ] = None,
    fault_coordinate: Annotated[
        bool,
        typer.Option(
            "--fault-coordinate",
            help="With --fault sybil: cheat only where another member of the group holds the"
            " job too (they tell one another on a side channel).",
        ),
    ] = False,
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated models to serve; default: all its class serves."),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            help="The node's Ed25519 private key (`cortensor node keygen`). Default:"
            " CORTENSOR_KEY_FILE, or the credentials file's key_file."
        ),
    ] = None,
) -> None:
    """Run an inference node (a Celery worker on its own queue)."""
    if ctx.invoked_subcommand is not None:
        return
    from cortensor.services.node.faults import option_problem
    from cortensor.services.node.main import build_node, serve_node

    problem = option_problem(
        fault, fault_rate, fault_group, fault_window_ms, fault_trust_after, fault_coordinate
    )
    if problem is not None:
        raise BadInput(problem)
    _configure_logging()
    if node_id is not None:
        try:
            TypeAdapter(NodeId).validate_python(node_id)
        except ValidationError as exc:
            raise BadInput("--node-id takes letters, digits, '_' and '-' (max 64)") from exc
    settings = _settings()
    if key is not None:
        settings = settings.model_copy(update={"key_file": key})
    service = build_node(
        settings,
        hw_class=cast(HwChoice, hw_class),
        node_id=node_id,
        fault=fault,  # checked by option_problem above
        fault_rate=fault_rate,
        fault_group=fault_group,
        fault_window_ms=fault_window_ms,
        fault_trust_after=fault_trust_after,
        fault_coordinate=fault_coordinate,
        models=None if models is None else [m.strip() for m in models.split(",") if m.strip()],
    )
    _expose_metrics(settings, "node")
    serve_node(service)


@app.command()
def router() -> None:
    """Run a router: jobs in, assignments out."""
    from cortensor.adapters.live import router_ports
    from cortensor.services.router.service import Router

    settings = _settings()

    async def serve(stop: asyncio.Event) -> None:
        async with router_ports(settings) as ports:
            await Router(settings, ports).run(stop)

    _serve(serve, settings, "router")


@app.command()
def guard() -> None:
    """Run a guard: results in, verdicts and reputation out."""
    from cortensor.adapters.live import guard_ports
    from cortensor.services.guard.service import Guard

    settings = _settings()

    async def serve(stop: asyncio.Event) -> None:
        async with guard_ports(settings) as ports:
            await Guard(settings, ports).run(stop)

    _serve(serve, settings, "guard")


@app.command()
def gateway(
    host: Annotated[
        str | None,
        typer.Option(help="The address to listen on; default CORTENSOR_GATEWAY_HOST (127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="The port; default CORTENSOR_GATEWAY_PORT (8080)."),
    ] = None,
) -> None:
    """Run the HTTP gateway: the network behind OpenAI-shaped endpoints, on a gateway's
    credentials (`cortensor credentials issue gateway NAME`)."""
    from cortensor.gateway.app import serve

    settings = _settings()
    _configure_logging()
    serve(settings, host=host or settings.gateway_host, port=port or settings.gateway_port)


def _print_verdict(verdict: Verdict, as_json: bool) -> None:
    if as_json:
        out.print_json(verdict.model_dump_json())
        return
    colour = {"verified": "green", "rejected": "yellow"}.get(verdict.status, "red")
    out.print(f"job {verdict.job_id}: [{colour}]{verdict.status}[/{colour}] — ", end="")
    out.print(verdict.reason, markup=False)
    if verdict.agreeing or verdict.disagreeing or verdict.timed_out:
        out.print(
            f"  agreed: {', '.join(verdict.agreeing) or '-'}"
            f" | disagreed: {', '.join(verdict.disagreeing) or '-'}"
            f" | timed out: {', '.join(verdict.timed_out) or '-'}",
            markup=False,
        )
    for part in verdict.parts:
        where = (
            f"{part.start_s:7.2f}-{part.end_s:7.2f} s"
            if part.start_s is not None and part.end_s is not None
            else f"texts {part.first_input}-{(part.first_input or 0) + (part.inputs or 0) - 1}"
        )
        out.print(
            f"  part {part.part} ({where}): {part.status}, by {', '.join(part.agreeing) or '-'}",
            markup=False,
        )
    for i, vector in enumerate(verdict.embeddings or []):
        head = ", ".join(f"{x:+.4f}" for x in vector[:4])
        out.print(f"  [{i}] {len(vector)}-d [{head}, ...]", markup=False)
    for i, c in enumerate(verdict.classes or []):
        others = ", ".join(f"{t.label} {t.score:.3f}" for t in c.top[1:])
        out.print(f"  [{i}] {c.label} ({c.score:.3f})  next: {others or '-'}", markup=False)
    if verdict.transcript is not None:
        t = verdict.transcript
        out.print(f"  language {t.language}, {t.duration_s:.1f} s of audio", markup=False)
        out.print(f"  {t.text}", markup=False)
    for i, g in enumerate(verdict.generations or []):
        out.print(f"  [{i}] ({len(g.tokens)} tokens, {g.finish_reason})", markup=False)
        out.print(f"  {g.text}", markup=False)


Deadline = Annotated[float, typer.Option(help="Seconds until the job fails.")]
Redundancy = Annotated[
    str,
    typer.Option(
        help="auto (the network replicates unless the node has a long record of valid"
        " results), or replicas on distinct nodes, 1 to 7."
    ),
]


def _redundancy(value: str) -> int | str:
    return int(value) if value.strip().isdigit() else value.strip()


HwOption = Annotated[str, typer.Option(help="A class, a precision or any.")]
Wait = Annotated[bool, typer.Option(help="Wait for the verdict.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _submit(fields: dict[str, Any], *, wait: bool, as_json: bool, progress: bool = False) -> None:
    """Validate a job, publish it, and print its id or (with wait) its verdict."""
    from cortensor.client import Client

    try:
        job = JobRequest(**fields)
    except ValidationError as exc:
        raise BadInput(f"invalid job: {explain(exc)}") from exc

    async def go() -> Verdict | None:
        async with Client(_settings()) as client:
            if not wait:
                await client.submit(job)
                return None
            if not progress or as_json:
                return await client.run(job)
            with err.status(f"job {job.job_id}: waiting for the first part") as status:
                done: list[int] = []

                def on_part(part: Verdict) -> None:
                    done.append(part.part or 0)
                    status.update(f"job {job.job_id}: {len(done)} part(s) decided")
                    err.print(f"  part {part.part}: {part.status} by", end=" ")
                    err.print(", ".join(part.agreeing) or "-", markup=False)

                return await client.run(job, on_part=on_part)

    verdict = _run(go())
    if verdict is None:
        if as_json:
            out.print_json(json.dumps({"job_id": str(job.job_id)}))
        else:
            out.print(str(job.job_id))
        return
    _print_verdict(verdict, as_json)
    if verdict.status != "verified":
        raise typer.Exit(EXIT_NO)


@submit_app.command("embed")
def submit_embed(
    texts: Annotated[list[str], typer.Argument(help="One or more texts to embed.")],
    redundancy: Redundancy = "auto",
    hw_class: HwOption = "any",
    deadline: Deadline = DEFAULT_DEADLINE_S,
    wait: Wait = False,
    as_json: AsJson = False,
) -> None:
    """Submit an embedding job (many texts are split across nodes)."""
    fields = {"task": "embed", "inputs": texts, "redundancy": _redundancy(redundancy)}
    _submit({**fields, "hw_class": hw_class, "deadline_s": deadline}, wait=wait, as_json=as_json)


@submit_app.command("classify")
def submit_classify(
    texts: Annotated[list[str], typer.Argument(help="One or more texts to classify.")],
    top_k: Annotated[
        int, typer.Option(help="Labels returned per text, best first.")
    ] = DEFAULT_TOP_K,
    redundancy: Redundancy = "auto",
    hw_class: HwOption = "any",
    deadline: Deadline = DEFAULT_DEADLINE_S,
    wait: Wait = False,
    as_json: AsJson = False,
) -> None:
    """Submit an intent-classification job: each text's label and top-k scores."""
    fields = {
        "task": "classify",
        "inputs": texts,
        "top_k": top_k,
        "redundancy": _redundancy(redundancy),
    }
    _submit({**fields, "hw_class": hw_class, "deadline_s": deadline}, wait=wait, as_json=as_json)


@submit_app.command("generate")
def submit_generate(
    prompts: Annotated[
        list[str], typer.Argument(help="One or more prompts, each answered on its own.")
    ],
    max_tokens: Annotated[
        int, typer.Option(help="The most new tokens of each answer.")
    ] = DEFAULT_MAX_TOKENS,
    system: Annotated[
        str | None, typer.Option(help="A system message before a single prompt.")
    ] = None,
    redundancy: Redundancy = "auto",
    hw_class: HwOption = "any",
    deadline: Deadline = DEFAULT_DEADLINE_S,
    wait: Wait = False,
    as_json: AsJson = False,
) -> None:
    """Submit a text-generation job (SmolLM2-135M-Instruct, greedy decoding): several
    prompts are split across nodes."""
    fields: dict[str, Any] = {
        "task": "generate",
        "max_tokens": max_tokens,
        "redundancy": _redundancy(redundancy),
    }
    if system is None:
        fields["inputs"] = prompts
    elif len(prompts) == 1:
        turns = [{"role": "system", "content": system}, {"role": "user", "content": prompts[0]}]
        fields["messages"] = turns
    else:
        raise BadInput("--system goes with a single prompt; submit the others on their own")
    _submit({**fields, "hw_class": hw_class, "deadline_s": deadline}, wait=wait, as_json=as_json)


@submit_app.command("transcribe")
def submit_transcribe(
    file: Annotated[Path, typer.Argument(help="A WAV, FLAC, MP3 or OGG file.")],
    language: Annotated[
        str | None, typer.Option(help="Spoken language (ISO code); default: detect.")
    ] = None,
    model: Annotated[str, typer.Option(help="whisper-base or whisper-tiny.en.")] = "",
    redundancy: Redundancy = "auto",
    hw_class: HwOption = "any",
    deadline: Annotated[float, typer.Option(help="Seconds until the job fails.")] = 300.0,
    wait: Wait = False,
    as_json: AsJson = False,
) -> None:
    """Submit a speech-to-text job; long audio is cut at silences and split across nodes."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {file}: {exc.strerror}") from exc
    fields: dict[str, Any] = {
        "task": "transcribe",
        "audio": base64.b64encode(data).decode("ascii"),
        "language": language,
        "model": model,
        "redundancy": _redundancy(redundancy),
    }
    _submit(
        {**fields, "hw_class": hw_class, "deadline_s": deadline},
        wait=wait,
        as_json=as_json,
        progress=True,
    )


@app.command()
def result(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    wait: Annotated[float, typer.Option(help="Seconds to wait for a verdict.")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a job's verdict; exit 5 while the network has the job undecided, 6 when it
    has no record of it."""
    from cortensor.client import Client, VerdictTimeout
    from cortensor.schemas import JobReceipt

    try:
        uuid = UUID(job_id)
    except ValueError as exc:
        raise BadInput(f"{job_id!r} is not a job id (a UUID)") from exc

    async def go() -> Verdict | JobReceipt | None:
        async with Client(_settings()) as client:
            if wait > 0:
                with contextlib.suppress(VerdictTimeout):
                    return await client.wait(uuid, wait)
            # The receipt first: a verdict published between the two reads is then found.
            receipt = await client.receipt(uuid)
            return await client.result(uuid) or receipt

    found = _run(go())
    if found is None:
        raise UnknownJob(
            f"the network has no record of job {uuid} (never submitted, or submitted under"
            " another name, or past retention)"
        )
    if not isinstance(found, Verdict):
        at = found.created_at.isoformat(timespec="seconds")
        raise NoVerdictYet(f"job {uuid} accepted at {at}, not decided yet")
    _print_verdict(found, as_json)


@app.command("report")
def report(
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME", help="A report: db/reports/NAME.sql, or nodes; without it, the list."
        ),
    ] = None,
    node: Annotated[str | None, typer.Option(help="The node, for node_history.")] = None,
    as_json: AsJson = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            metavar="PNG",
            help="Also draw it into a PNG: leaderboard, node_reputation, disagreement and"
            " hw_classes as bars, replicas and node_history as lines.",
        ),
    ] = None,
) -> None:
    """Admin reports from the ledger: the SQL files under db/reports/, which psql runs too."""
    from cortensor.tools.reports import (
        ALIASES,
        find_report,
        render_table,
        reports,
        run_report,
        to_json,
    )

    if name is None:
        known = [
            {
                "report": r.name,
                "needs": " ".join(f"--{p}" for p in r.parameters),
                "shows": r.description,
            }
            for r in reports().values()
        ]
        known += [
            {"report": alias, "needs": "", "shows": f"= {to}"} for alias, to in ALIASES.items()
        ]
        out.print(render_table("Reports (cortensor report NAME)", known))
        return
    settings = _settings()
    found = find_report(name)
    if plot is not None:
        from cortensor.tools.plots import chart_of, plot_report

        chart_of(found.name)  # a report that cannot be drawn is refused before the query
    rows = run_report(settings, found.name, {} if node is None else {"node": node})
    if plot is not None:
        plot_report(found.name, rows, plot)
        err.print(f"{found.name} drawn in {plot}", markup=False)
    if as_json:
        out.print_json(json.dumps(rows, default=to_json))
    else:
        out.print(render_table(found.description, rows))


@app.command()
def top(
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between frames.")] = 1.0,
    window: Annotated[
        float, typer.Option(min=1.0, help="Seconds the rates are measured over.")
    ] = 10.0,
    limit: Annotated[int, typer.Option(min=1, help="Most nodes listed.")] = 50,
    seen: Annotated[
        float, typer.Option(min=1.0, help="List the nodes heard of within this many seconds.")
    ] = 300.0,
) -> None:
    """A live view of the fleet (as the admin): jobs per second by status, queue depth
    per hardware class, and each node's trust, score, work and rate; Ctrl-C ends it."""
    from rich.live import Live

    from cortensor.tools.top import run

    settings = _settings()
    if once:
        _run(run(settings, out.print, once=True, window_s=window, seen_s=seen, limit=limit))
        return
    with Live(console=out, refresh_per_second=4) as live, contextlib.suppress(KeyboardInterrupt):
        show = live.update
        _run(run(settings, show, interval_s=interval, window_s=window, seen_s=seen, limit=limit))


@reputation_app.command("check")
def reputation_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recompute every node's standing from the reputation events alone and compare it
    with the stored one; exit 1 on any difference."""
    from dataclasses import asdict

    from cortensor.tools.audit import audit

    outcome = audit(_settings())
    if as_json:
        out.print_json(json.dumps(asdict(outcome), default=str))
    else:
        out.print(f"{outcome.events} events, {outcome.standings} standings recomputed")
        for m in outcome.mismatches:
            out.print(
                f"  {m.node_id} {m.model or '(all models)'} {m.field}: stored {m.stored!r},"
                f" events give {m.recomputed!r}",
                markup=False,
            )
        if not outcome.mismatches:
            out.print("[green]every stored standing follows from the events[/green]")
    if outcome.mismatches:
        raise typer.Exit(EXIT_NO)


@app.command()
def demo(
    jobs: Annotated[int, typer.Option(help="Jobs to push through the fleet.")] = 24,
    redundancy: Annotated[int, typer.Option(help="Replicas per job.")] = 3,
    log_dir: Annotated[Path, typer.Option(help="Where the fleet writes its logs.")] = Path(
        "var/demo-logs"
    ),
) -> None:
    """Run the demo: a fleet of 3 honest nodes and 1 dishonest, jobs, results, report."""
    from cortensor.tools.demo import run_demo

    raise typer.Exit(run_demo(_settings(), jobs=jobs, redundancy=redundancy, log_dir=log_dir))


@app.command()
def simulate(
    nodes: Annotated[int, typer.Option(min=1, help="Simulated nodes.")] = 1000,
    jobs: Annotated[int, typer.Option(min=0, help="Real jobs to route.")] = 100_000,
    dishonest: Annotated[float, typer.Option(min=0, max=1, help="Faulty share.")] = 0.2,
    mix: Annotated[
        str | None,
        typer.Option(
            help="Relative shares of fault modes, e.g. sybil=10,random=1,lazy=1,noisy=1,"
            "colluding=1,intermittent=2,slow=1,crash=1,probe-aware=1,adaptive=1 (the default)."
        ),
    ] = None,
    intermittent_p: Annotated[
        float, typer.Option(min=0, max=1, help="Share of jobs an intermittent node gets wrong.")
    ] = 0.1,
    probation: Annotated[
        bool, typer.Option(help="Admit nodes by probes; --no-probation starts them active.")
    ] = True,
    timeout_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of deadlines an honest node misses.")
    ] = 0.02,
    overload_every: Annotated[
        float,
        typer.Option(min=0, help="Mean seconds between overloads of an honest node (0: none)."),
    ] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 1,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of reputation and replicas over time.")
    ] = None,
) -> None:
    """Run the routing, consensus and reputation policy on a simulated fleet; print JSON."""
    from cortensor.tools import simulate as sim

    config = sim.SimConfig(
        nodes=nodes,
        jobs=jobs,
        dishonest=dishonest,
        mix=sim.parse_mix(mix) if mix is not None else dict(sim.DEFAULT_MIX),
        intermittent_p=intermittent_p,
        probation=probation,
        timeout_rate=timeout_rate,
        overload_every_s=overload_every or float("inf"),
        seed=seed,
    )
    report, run = sim.simulate(config)
    if plot is not None:
        sim.plot(run, plot)
    typer.echo(json.dumps(report, indent=2))


PrincipalKind = Annotated[
    str,
    typer.Argument(help="node, client, gateway, router, guard, reports or owner.", metavar="KIND"),
]
PrincipalName = Annotated[
    str, typer.Argument(help="The node's id or the principal's name.", metavar="NAME")
]


def _kind(kind: str) -> Kind:
    from cortensor.adapters.principals.grants import ISSUED_KINDS

    if kind not in ISSUED_KINDS:
        raise BadInput(f"KIND is one of {', '.join(ISSUED_KINDS)}, not {kind!r}")
    return kind


@credentials_app.command("admin")
def credentials_admin(
    out: Annotated[Path, typer.Option(help="Where to write the admin's credentials.")],
) -> None:
    """Create or check the admin's users (RabbitMQ, NATS) and write its credentials."""
    from cortensor.tools.credentials import bootstrap_admin

    written = bootstrap_admin(_settings(), out)
    _said(f"admin credentials in {written}")


@credentials_app.command("issue")
def credentials_issue(
    kind: PrincipalKind,
    name: PrincipalName,
    out_file: Annotated[Path, typer.Option("--out", help="The credentials file to write.")],
    hw_class: Annotated[
        str,
        typer.Option(
            help="A node's hardware class, whose exchange its queue is bound on; auto: the"
            " class `cortensor node` picks on this host."
        ),
    ] = "auto",
    public_key: Annotated[
        str | None,
        typer.Option(
            help="A node's own public key: the base64 `cortensor node keygen` printed (or a"
            " file holding it or a PEM key); the private key stays with the node."
        ),
    ] = None,
) -> None:
    """Issue a principal's credentials: its users, permissions, key or ledger login."""
    from cortensor.tools.credentials import issue

    settings = _settings()
    written = issue(settings, _kind(kind), name, out_file, hw_class=hw_class, public_key=public_key)
    _said(f"{kind} {name} of namespace {settings.namespace}: credentials in {written}")


@credentials_app.command("revoke")
def credentials_revoke(kind: PrincipalKind, name: PrincipalName) -> None:
    """Revoke a principal's credentials everywhere and close its open connections."""
    from cortensor.tools.credentials import revoke

    removed = revoke(_settings(), _kind(kind), name)
    _said(f"revoked {kind} {name}: {', '.join(removed) or 'nothing was issued'}")


@credentials_app.command("fleet")
def credentials_fleet(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the files.")],
    nodes: Annotated[int, typer.Option(min=0, help="Nodes: node.1.json .. node.N.json.")] = 3,
    generators: Annotated[
        int, typer.Option(min=0, help="Language-model nodes: generator.1.json ..")
    ] = 3,
    clients: Annotated[
        str, typer.Option(help="Comma-separated client names, each NAME.json.")
    ] = "client",
    hw_class: Annotated[
        str, typer.Option(help="The nodes' hardware class (auto: as `cortensor node` picks).")
    ] = "auto",
) -> None:
    """Issue the credentials of a Procfile fleet: router, guard, reports, nodes, clients."""
    from cortensor.tools.credentials import issue_fleet

    names = [c.strip() for c in clients.split(",") if c.strip()]
    admin = _settings()
    issued = issue_fleet(
        admin, directory, nodes=nodes, generators=generators, clients=names, hw_class=hw_class
    )
    for done in issued:
        _said(f"  {done.kind} {done.name}: {done.path}")


@credentials_app.command("revoke-namespace")
def credentials_revoke_namespace() -> None:
    """Revoke every principal of the namespace (RabbitMQ and NATS users, API keys)."""
    from cortensor.tools.credentials import revoke_namespace

    settings = _settings()
    gone = revoke_namespace(settings)
    _said(f"revoked {len(gone)} users of namespace {settings.namespace}")


dead_app = typer.Typer(
    help="What waits in the dead-letter and parked queues (as the admin: they hold user content)."
)
app.add_typer(dead_app, name="dead")


@dead_app.command("list")
def dead_list(
    as_json: AsJson = False,
    limit: Annotated[
        int, typer.Option(min=1, max=10_000, help="Most messages to show from each queue.")
    ] = 100,
) -> None:
    """Show dead and parked messages without consuming them: id, job, owner, reason,
    deliveries, when it died, size. `dead` ones are still to be handled by a router."""
    from cortensor.tools.dead import list_dead
    from cortensor.tools.reports import render_table

    rows = [m.row() for m in _run(list_dead(_settings(), limit=limit))]
    if as_json:
        out.print_json(json.dumps(rows))
    elif not rows:
        _said("nothing dead or parked")
    else:
        out.print(render_table("Dead and parked messages", rows))


@dead_app.command("replay")
def dead_replay(
    ids: Annotated[
        list[str] | None, typer.Argument(metavar="ID", help="Ids that `dead list` shows.")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead or parked job.")] = False,
    as_json: AsJson = False,
) -> None:
    """Send dead or parked jobs back to the jobs exchange under their own routing key,
    where they never got a verdict; say why not for the others (exit 1 if any)."""
    from dataclasses import asdict

    from cortensor.tools.dead import parse_ids, replay

    if bool(ids) == every:
        raise BadInput(
            "name the messages to replay (their ids from `cortensor dead list`) or --all"
        )
    done = _run(replay(_settings(), None if every else parse_ids(ids or [])))
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in done]))
    else:
        for r in done:
            _said(f"{r.id}: {'replayed' if r.replayed else 'refused'}: {r.why}")
        if not done:
            _said("nothing dead or parked")
    if not every and not all(r.replayed for r in done):
        raise typer.Exit(EXIT_NO)


@dead_app.command("purge")
def dead_purge(
    yes: Annotated[bool, typer.Option("--yes", help="Really remove them.")] = False,
) -> None:
    """Remove every parked message (they expire after a day anyway)."""
    from cortensor.tools.dead import purge

    if not yes:
        raise BadInput("purging removes every parked message for good: add --yes")
    _said(f"purged {_run(purge(_settings()))} parked message(s)")


def _said(line: str) -> None:
    out.print(line, markup=False)


def main() -> None:
    """Entry point of the console script."""
    app()
