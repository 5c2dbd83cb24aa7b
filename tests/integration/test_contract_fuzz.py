"""The published contract, from outside: job messages generated from
docs/schemas/JobRequest.schema.json, valid and mutated, published by a client that is
not this package (Debian's `amqp-publish`, logged in with a client's issued
credentials) to a router on the real RabbitMQ, ledger and NATS. Every message with a
readable job id ends in exactly one terminal verdict on the verdicts stream; every
other one is dead-lettered with its reason in a header.

No node runs: the router alone decides rejections, and a job it accepts waits for
nodes until its deadline, then fails for want of them, which is its terminal verdict.
The valid jobs are therefore generated with deadlines of at most QUICK_DEADLINE_S
seconds (the schema's range otherwise); the mutations use the whole range.

The messages are drawn from the schema as tests/schema_jobs.py says.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
import re
import shlex
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from nats.js.errors import NotFoundError

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.live import router_ports
from cortensor.adapters.topology import Topology
from cortensor.cli import SCHEMAS_DIR
from cortensor.protocol.intake import Rejected, Undeliverable, read_job
from cortensor.schemas import MAX_INPUTS, MAX_TEXT_CHARS, JobRequest, Verdict
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from cortensor.tools.credentials import issue
from tests.bad_jobs import bad_jobs
from tests.conftest import eventually
from tests.schema_jobs import PUBLISHED, objects, schema_valid

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.nats]

OWNER = "fuzzer"
SCHEMA_VALID = 600
"""Jobs drawn from the schema: half from it as published, half with the model and the
texts narrowed to ones the network serves, so that some are accepted."""
MUTATED = 500
QUICK_DEADLINE_S = 2.0
PUBLISHERS = 8
"""amqp-publish processes at once for the messages it cannot take one per line."""


# -- generated messages ---------------------------------------------------------------------


def narrowed() -> list[dict[str, Any]]:
    """The published schema with quick deadlines, and a copy whose models and texts are
    ones a job is accepted with."""
    quick = json.loads(json.dumps(PUBLISHED))
    quick["properties"]["deadline_s"]["maximum"] = QUICK_DEADLINE_S
    served = json.loads(json.dumps(quick))
    served["properties"]["model"] = {"enum": ["", "all-MiniLM-L6-v2", "rag-intent-classifier"]}
    served["properties"]["task"] = {"enum": ["embed", "classify"]}
    served["properties"]["audio"] = {"type": "null"}
    served["properties"]["inputs"].update(minItems=1, maxItems=4)
    served["properties"]["inputs"]["items"]["pattern"] = "^[a-z ]*[a-z][a-z ]*$"
    served["properties"]["inputs"]["items"]["maxLength"] = 64
    served["required"] = ["job_id", "task", "inputs"]
    return [quick, served]


def drawn(strategy: st.SearchStrategy[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` objects from `strategy`, drawn by hypothesis (generation only, a fixed
    seed: the same messages every run)."""
    found: list[dict[str, Any]] = []

    @seed(20261203)
    @settings(
        max_examples=count,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(raw: dict[str, Any]) -> None:
        found.append(raw)

    collect()
    return found


def encoded(raw: Any) -> bytes:
    return json.dumps(raw).encode()


Mutation = Callable[[dict[str, Any], random.Random], bytes]

_WRONG_TYPES: list[Any] = [None, True, -1, 3.5, "text", [], {}, ["x"], {"a": 1}]
_OUT_OF_RANGE: list[tuple[str, Any]] = [
    ("deadline_s", 0),
    ("deadline_s", -1),
    ("deadline_s", 601),
    ("deadline_s", math.nan),
    ("deadline_s", math.inf),
    ("top_k", 0),
    ("top_k", 21),
    ("redundancy", 0),
    ("redundancy", 8),
    ("schema_version", 2),
    ("inputs", [""]),
    ("inputs", ["x"] * (MAX_INPUTS + 1)),
    ("inputs", ["x" * (MAX_TEXT_CHARS + 1)]),
    ("model", "m" * 65),
    ("language", "english"),
    ("created_at", "2030-13-45T99:00:00Z"),
]
_TEXT_FIELDS = ("task", "model", "hw_class", "language", "inputs")


def _with(raw: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**raw, **changes}


def _spoiled_text(raw: dict[str, Any], rng: random.Random, bad: str) -> dict[str, Any]:
    """`raw` with `bad` put into one of its text fields."""
    name = rng.choice(_TEXT_FIELDS)
    value = raw.get(name)
    if name == "inputs":
        texts = list(value) if isinstance(value, list) and value else ["text"]
        at = rng.randrange(len(texts))
        texts[at] = f"{texts[at]}{bad}{texts[at]}"
        return _with(raw, inputs=texts)
    text = value if isinstance(value, str) else "embed"
    cut = rng.randint(0, len(text))
    return _with(raw, **{name: text[:cut] + bad + text[cut:]})


MUTATIONS: dict[str, Mutation] = {
    "drop-job-id": lambda raw, rng: encoded({k: v for k, v in raw.items() if k != "job_id"}),
    "bad-job-id": lambda raw, rng: encoded(
        _with(raw, job_id=rng.choice(["", "job-1", 42, None, [raw["job_id"]], raw["job_id"][:-1]]))
    ),
    "drop-inputs": lambda raw, rng: encoded(
        {k: v for k, v in _with(raw, task="embed").items() if k != "inputs"}
    ),
    "wrong-type": lambda raw, rng: encoded(
        _with(raw, **{rng.choice(sorted(PUBLISHED["properties"])): rng.choice(_WRONG_TYPES)})
    ),
    "out-of-range": lambda raw, rng: encoded(_with(raw, **dict([rng.choice(_OUT_OF_RANGE)]))),
    "nul": lambda raw, rng: encoded(_spoiled_text(raw, rng, "\x00")),
    "raw-nul-byte": lambda raw, rng: encoded(_spoiled_text(raw, rng, "\x00")).replace(
        b"\\u0000", b"\x00"
    ),
    "lone-surrogate": lambda raw, rng: encoded(_spoiled_text(raw, rng, "\ud834")),
    "extra-field": lambda raw, rng: encoded(_with(raw, **{f"x{rng.randrange(99)}": 1})),
    "junk-bytes": lambda raw, rng: rng.randbytes(rng.randint(0, 64)),
    "truncated": lambda raw, rng: (data := encoded(raw))[: rng.randrange(len(data))],
    "not-an-object": lambda raw, rng: encoded(rng.choice([[raw], raw["job_id"], 7, None])),
}


@dataclass(frozen=True, slots=True)
class Sent:
    """One message as published, and what the router's intake makes of it."""

    name: str
    body: bytes
    outcome: JobRequest | Rejected | Undeliverable

    @classmethod
    def of(cls, name: str, body: bytes) -> Sent:
        return cls(name, body, read_job(body))


@functools.cache
def messages() -> list[Sent]:
    """The named bad-input table, the schema's jobs, and mutations of them; each job
    under an id of its own."""
    rng = random.Random(20261203)
    table = [bad_jobs(str(uuid.uuid4()))[i] for i in range(len(bad_jobs("")))]
    sent = [Sent.of(f"table:{case.name}", case.body) for case in table]
    valid = [raw for schema in narrowed() for raw in drawn(objects(schema), SCHEMA_VALID // 2)]
    for raw in valid:
        sent.append(Sent.of("schema", encoded(_with(raw, job_id=str(uuid.uuid4())))))
    for i in range(MUTATED):
        name = rng.choice(sorted(MUTATIONS))
        body = MUTATIONS[name](_with(valid[i % len(valid)], job_id=str(uuid.uuid4())), rng)
        sent.append(Sent.of(f"mutated:{name}", body))
    return sent


# -- the router, a client's credentials, amqp-publish ---------------------------------------


@pytest.fixture
def client_login(broker_settings: Settings, tmp_path: Path) -> str:
    """The AMQP URL of a client issued for this test (revoked with the namespace)."""
    path = issue(broker_settings, "client", OWNER, tmp_path / f"{OWNER}.json")
    url = urlsplit(json.loads(path.read_text())["amqp_url"])
    # librabbitmq reads an empty path as the vhost "" (the Python clients, as "/").
    return urlunsplit(url._replace(path=url.path if url.path.strip("/") else "/%2F"))


@pytest.fixture
async def router_running(broker_settings: Settings) -> AsyncIterator[Router]:
    stop = asyncio.Event()
    async with router_ports(broker_settings) as ports:
        router = Router(broker_settings, ports, seed=5)
        task = asyncio.create_task(router.run(stop))
        try:
            yield router
        finally:
            stop.set()
            await task


async def amqp_publish(url: str, topology: Topology, messages: Sequence[Sent]) -> None:
    """Publish with Debian's amqp-publish, a process per message (its standard input
    is the body, sent as is), PUBLISHERS at once.

    amqp-publish has no publisher confirms, so RabbitMQ owes it nothing: with many
    messages on one channel (-l, a message per line), the last ones were lost when the
    channel closed while the quorum queue still held them pending (on a loaded machine,
    208 of 1,117 in one run). One message per channel is sent on at once."""
    args = [
        "amqp-publish",
        f"--url={url}",
        f"--exchange={topology.jobs_exchange}",
        f"--routing-key={topology.jobs_routing_key(OWNER)}",
        "--persistent",
        "--content-type=application/json",
    ]
    gate = asyncio.Semaphore(PUBLISHERS)

    async def run(stdin: bytes) -> None:
        async with gate:
            process = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await process.communicate(stdin)
        assert process.returncode == 0, output.decode(errors="replace")

    await asyncio.gather(*(run(m.body) for m in messages))


# -- what came out -------------------------------------------------------------------------


async def verdict_reader(settings: Settings, topology: Topology) -> tuple[Any, list[Verdict]]:
    """A subscription to this owner's verdicts (not receipts nor parts), and the list it
    fills."""
    nc = await jetstream.connect_as(settings, name="contract-fuzz")
    found: list[Verdict] = []

    async def take(msg: Any) -> None:
        found.append(Verdict.model_validate_json(msg.data))

    await nc.jetstream().subscribe(
        topology.verdicts_subject("*", owner=OWNER),
        stream=topology.verdicts_stream,
        ordered_consumer=True,
        cb=take,
    )
    return nc, found


async def drain_dead(settings: Settings, topology: Topology, into: list[tuple[bytes, str]]) -> None:
    """Move what the dead-letter queue (and the parked queue, where a dead-letter reader
    parks what it cannot end) holds into `into`, as (body, reason)."""
    connection = await amqp.connect_as(settings)
    async with connection:
        channel = await connection.channel()
        for name in (topology.dead_letter_queue, topology.parked_queue):
            queue = await channel.get_queue(name, ensure=False)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                into.append((message.body, str(message.headers.get(amqp.REASON_HEADER, ""))))


async def test_every_generated_message_ends_once(
    broker_settings: Settings, client_login: str, router_running: Router
) -> None:
    sent = messages()
    assert len(sent) >= 1000
    # The contract itself: what the schema refuses is never accepted, and what it
    # accepts always has a readable job id.
    for m in sent:
        if schema_valid(m.body):
            assert not isinstance(m.outcome, Undeliverable), (m.name, m.body, m.outcome)
        else:
            assert not isinstance(m.outcome, JobRequest), (m.name, m.body)
    kinds = Counter(type(m.outcome).__name__ for m in sent)
    assert min(kinds.values()) >= 50, kinds  # every ending is exercised

    topology = Topology(broker_settings.namespace)
    nc, verdicts = await verdict_reader(broker_settings, topology)
    try:
        await amqp_publish(client_login, topology, sent)
        ended = {str(m.outcome.job_id): m for m in sent if not isinstance(m.outcome, Undeliverable)}
        assert len(ended) == len(sent) - kinds["Undeliverable"]  # one id per job
        try:
            await eventually(
                lambda: {str(v.job_id) for v in verdicts} >= set(ended) or None,
                what="a verdict on every job with a readable id",
                within=150.0,
                interval=0.25,
            )
        except AssertionError as exc:
            missing = set(ended) - {str(v.job_id) for v in verdicts}
            lacking = Counter((ended[j].name, type(ended[j].outcome).__name__) for j in missing)
            raise AssertionError(f"{exc}; {len(missing)} lack one: {dict(lacking)}") from None
        dead: list[tuple[bytes, str]] = []
        wanted = Counter(m.body for m in sent if isinstance(m.outcome, Undeliverable))

        async def all_dead() -> bool:
            await drain_dead(broker_settings, topology, dead)
            return Counter(body for body, _ in dead) >= wanted

        await eventually(
            all_dead, what="every unreadable message dead-lettered", within=60.0, interval=0.25
        )
    finally:
        await nc.close()

    once = Counter(str(v.job_id) for v in verdicts)
    assert set(once) == set(ended)
    assert [j for j, n in once.items() if n != 1] == []
    for v in verdicts:
        m = ended[str(v.job_id)]
        assert v.owner == OWNER
        if isinstance(m.outcome, Rejected):
            assert (v.status, v.reason) == ("rejected", m.outcome.reason), m.name
        elif v.status == "rejected":  # the router's audio check, after the schema
            assert m.outcome.task == "transcribe", (m.name, v)
            assert v.reason.startswith("audio: "), (m.name, v)
        else:
            assert v.status == "failed", (m.name, v)
            assert v.reason, (m.name, v)

    assert Counter(body for body, _ in dead) == wanted  # nothing readable among them
    reasons = {m.body: m.outcome.reason for m in sent if isinstance(m.outcome, Undeliverable)}
    for body, reason in dead:
        assert reason == reasons[body][:1000], (body, reason)


def test_the_table_and_the_mutations_are_all_drawn() -> None:
    """Every named case and every mutation is among the messages published."""
    names = Counter(m.name.split(":")[0] for m in messages())
    assert names["table"] == len(bad_jobs(""))
    assert {m.name for m in messages() if m.name.startswith("mutated:")} == {
        f"mutated:{name}" for name in MUTATIONS
    }


def documented_example() -> str:
    """The amqp-publish command docs/schemas/README.md gives as its example."""
    text = (SCHEMAS_DIR / "README.md").read_text()
    start = text.index("```\n", text.index("with amqp-tools")) + 4
    return text[start : text.index("```", start)]


async def test_the_documented_example_publishes_a_job_the_router_records(
    broker_settings: Settings, client_login: str, router_running: Router
) -> None:
    topology = Topology(broker_settings.namespace)
    command = documented_example()
    for placeholder, value in {
        '"amqp://USER:PASSWORD@127.0.0.1:5672/%2F"': shlex.quote(client_login),
        "cortensor.submit": topology.jobs_exchange,
        "job.NAME": topology.jobs_routing_key(OWNER),
    }.items():
        assert placeholder in command, placeholder
        command = command.replace(placeholder, value)
    found = re.search(r'"job_id": "([0-9a-f-]{36})"', command)
    assert found is not None, command
    receipt_subject = topology.receipt_subject(found[1], owner=OWNER)

    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")

    nc = await jetstream.connect_as(broker_settings, name="contract-example")
    try:

        async def receipt() -> bytes | None:
            try:
                msg = await nc.jetstream().get_last_msg(topology.verdicts_stream, receipt_subject)
            except NotFoundError:
                return None
            return msg.data

        data = await eventually(receipt, what="the router's receipt for the example's job")
    finally:
        await nc.close()
    assert json.loads(data)["job_id"] == found[1]
