"""The whole loop on real services: a fleet started from the Procfile, jobs from the SDK.

Three honest nodes (`honcho start -c node=3`) and one node that answers with random
vectors. Every job must end in a terminal state, every verified embedding must match
the model run directly, and the ledger must rank the dishonest node below the others.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import numpy as np
import pytest

from cortensor.adapters.amqp import REASON_HEADER
from cortensor.adapters.ledger import migrate
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.adapters.topology import Topology
from cortensor.client import Client
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.embedding import EmbeddingRuntime
from cortensor.schemas import MAX_INPUTS, MAX_JOB_BYTES, MAX_TEXT_CHARS, JobRequest
from cortensor.settings import Settings
from cortensor.tools.credentials import fleet_node_id
from cortensor.tools.fleet import Fleet
from cortensor.tools.reports import node_report
from tests.conftest import make_settings, run_cortensor
from tests.e2e.conftest import DISHONEST

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.nats,
    pytest.mark.postgres,
    pytest.mark.models,
]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quorum queues replicate messages with Raft.",
    "A guard compares the outputs of redundant replicas.",
    "PostgreSQL keeps the reputation ledger.",
    "Hello",
    "Embeddings map text to vectors of 384 numbers.",
    "It rained all day in Lisbon.",
    "Which node answered first does not matter.",
    "Consensus needs a strict majority of replicas.",
    "Cheap hardware can still do honest work.",
]


def _job(**fields: Any) -> bytes:
    body = {"job_id": str(uuid.uuid4()), "schema_version": 1, "inputs": ["fine"], **fields}
    return json.dumps(body).encode()


# The bad-input table: each case is a raw message and what the user must be told.
REJECTED = [
    ("wrong schema version", _job(schema_version=2), "schema_version"),
    ("unknown task", _job(task="summarize"), "task"),
    ("unknown model", _job(model="gpt-9"), "unknown model"),
    ("unknown hardware class", _job(hw_class="tpu-int4"), "hw_class"),
    ("empty inputs", _job(inputs=[]), "inputs"),
    ("blank text", _job(inputs=["ok", "   "]), "blank"),
    ("text too long", _job(inputs=["x" * (MAX_TEXT_CHARS + 1)]), "inputs.0"),
    ("too many inputs", _job(inputs=["t"] * (MAX_INPUTS + 1)), "inputs"),
    ("oversized job", _job(inputs=["y" * 8000] * 1600), f"limit of {MAX_JOB_BYTES}"),
    ("redundancy zero", _job(redundancy=0), "redundancy"),
    ("redundancy too high", _job(redundancy=99), "redundancy"),
    ("inputs not a list", _job(inputs="just a string"), "inputs"),
]
DEAD_LETTERED = [
    ("malformed JSON", b'{"job_id": "oops', "not usable JSON"),
    ("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000, "not usable JSON"),
    ("not an object", b"[1, 2, 3]", "not an object"),
    ("no job id", json.dumps({"schema_version": 1, "inputs": ["x"]}).encode(), "no job_id"),
    ("job id not a UUID", _job(job_id="job-1"), "not a UUID"),
]


async def _dead_letters(settings: Settings, count: int) -> list[tuple[bytes, str]]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        # Dead-lettered by the router, parked with their reason by its dead-letter reader.
        queue = await channel.get_queue(Topology(settings.namespace).parked_queue)
        found: list[tuple[bytes, str]] = []
        for _ in range(200):
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                if len(found) >= count:
                    break
                await asyncio.sleep(0.05)
                continue
            found.append((message.body, str(message.headers.get(REASON_HEADER, ""))))
        return found


async def test_bad_input_is_rejected_or_dead_lettered_and_good_jobs_still_pass(
    fleet: tuple[Settings, Fleet],
) -> None:
    settings, _ = fleet
    async with Client(settings) as client:
        for name, body, expected in REJECTED:
            job_id = uuid.UUID(json.loads(body)["job_id"])
            await client.publish_raw(body, message_id=str(job_id))
            verdict = await client.wait(job_id, timeout_s=20)
            assert verdict.status == "rejected", name
            assert expected in verdict.reason, f"{name}: {verdict.reason}"
        for _, body, _ in DEAD_LETTERED:
            await client.publish_raw(body)
        good = await client.run(JobRequest(inputs=["still working"], redundancy=3), timeout_s=30)
    assert good.status == "verified"
    parked = dict(await _dead_letters(settings, len(DEAD_LETTERED)))
    # Routers take jobs in concurrent batches: dead letters need not keep their order.
    assert len(parked) == len(DEAD_LETTERED)
    for name, body, expected in DEAD_LETTERED:
        assert body in parked, name
        assert expected in parked[body], f"{name}: {parked[body]}"


async def _settled(settings: Settings) -> Any:
    """Ledger counts of real jobs (known-answer probes left out) once every assignment
    has its reputation event (verdicts go out on a majority; the last replicas land,
    and are scored, a moment later)."""
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        for _ in range(100):
            counts = await conn.fetchrow(
                """
                SELECT (SELECT count(*) FROM verdicts JOIN jobs USING (job_id)
                        WHERE NOT probe) AS verdicts,
                       (SELECT count(*) FROM assignments JOIN jobs USING (job_id)
                        WHERE NOT probe) AS assignments,
                       (SELECT count(*) FROM reputation_events WHERE NOT probe) AS events,
                       (SELECT count(*) FROM results JOIN jobs USING (job_id)
                        WHERE NOT probe) AS results
                """
            )
            if counts["events"] == counts["assignments"]:
                break
            await asyncio.sleep(0.1)
        return counts
    finally:
        await conn.close()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


async def test_thirty_jobs_verified_and_the_dishonest_node_ranks_last(
    fleet: tuple[Settings, Fleet],
) -> None:
    settings, _ = fleet
    texts = [f"{SENTENCES[i % len(SENTENCES)]} (job {i})" for i in range(30)]
    jobs = [JobRequest(inputs=[t], redundancy=3, deadline_s=60) for t in texts]
    async with Client(settings) as client:
        verdicts = await client.run_many(jobs, timeout_s=90)

    assert {v.status for v in verdicts} <= {"verified", "inconclusive", "failed"}
    verified = [(j, v) for j, v in zip(jobs, verdicts, strict=True) if v.status == "verified"]
    assert len(verified) == len(jobs), [v.reason for v in verdicts if v.status != "verified"]

    manifest = load_manifest(settings.models_dir)
    reference = EmbeddingRuntime.from_manifest(
        settings.models_dir, manifest.variant_for("all-MiniLM-L6-v2", "cpu-fp32")
    )
    for job, verdict in verified:
        assert DISHONEST not in verdict.agreeing
        assert verdict.embeddings is not None
        got = np.asarray(verdict.embeddings, dtype=np.float32)
        expected = reference.embed(job.inputs)
        assert got.shape == expected.shape
        assert float(_cosine(got, expected).min()) >= 0.95

    await _settled(settings)
    report = {row["node_id"]: row for row in node_report(settings)}
    assert DISHONEST in report
    honest = [row for node, row in report.items() if node != DISHONEST]
    assert len(honest) == 3
    cheat = report[DISHONEST]
    assert cheat["disagreed"] > 0
    assert cheat["agreed"] == 0
    assert all(cheat["score"] < row["score"] for row in honest)
    assert all(row["disagreed"] == 0 and row["agreed"] > 0 for row in honest)


def test_the_readme_commands_work_against_the_fleet(fleet: tuple[Settings, Fleet]) -> None:
    settings, _ = fleet
    submitted = run_cortensor(
        settings, "submit", "embed", "The cat sat on the mat.", "Dogs bark.",
        "--redundancy", "3", "--wait", "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    verdict = json.loads(submitted.stdout)
    assert verdict["status"] == "verified"
    assert [len(v) for v in verdict["embeddings"]] == [384, 384]

    shown = run_cortensor(settings, "result", verdict["job_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == verdict

    queued = run_cortensor(settings, "submit", "embed", "Hello", "--json")
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["job_id"]
    waited = run_cortensor(settings, "result", job_id, "--wait", "20")
    assert waited.returncode == 0, waited.stderr
    assert f"job {job_id}: verified" in waited.stdout

    report = run_cortensor(settings, "report", "nodes", "--json")
    assert report.returncode == 0, report.stderr
    assert DISHONEST in {row["node_id"] for row in json.loads(report.stdout)}

    refused = run_cortensor(settings, "submit", "embed", "   ", "--redundancy", "9")
    assert refused.returncode == 2
    assert "redundancy" in refused.stderr
    assert "blank" in refused.stderr


def _process_of(namespace: str, honcho_name: str) -> int:
    """The pid of the Python process honcho started as `honcho_name` for this fleet."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (
            f"CORTENSOR_NAMESPACE={namespace}".encode() in environ
            and f"HONCHO_PROCESS_NAME={honcho_name}".encode() in environ
            and b"python" in cmdline
        ):
            return int(entry.name)
    raise LookupError(f"no process {honcho_name} in namespace {namespace}")


async def test_work_on_a_hung_node_is_rerouted_to_other_nodes(
    fleet: tuple[Settings, Fleet],
) -> None:
    settings, _ = fleet
    hung = fleet_node_id(1)
    pid = _process_of(settings.namespace, "node.1")
    # Stopped, the node still looks alive to the router for a few seconds: the work
    # it is given is lost in flight until its assignments pass their deadline.
    os.kill(pid, signal.SIGSTOP)
    try:
        jobs = [
            JobRequest(inputs=[f"rerouted {i}"], redundancy=2, deadline_s=30) for i in range(12)
        ]
        async with Client(settings) as client:
            verdicts = await client.run_many(jobs, timeout_s=60)
    finally:
        os.kill(pid, signal.SIGCONT)

    assert all(hung not in v.agreeing for v in verdicts)
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        for verdict in verdicts:
            if verdict.status == "verified":
                continue
            # Two honest replicas always agree: a job short of a majority must have
            # drawn the cheat as the other replica.
            assert verdict.status == "inconclusive", verdict.reason
            held = await conn.fetch(
                "SELECT node_id FROM assignments WHERE job_id = $1", verdict.job_id
            )
            assert DISHONEST in {r["node_id"] for r in held}, verdict.reason
        rerouted = await conn.fetchval(
            "SELECT count(*) FROM assignments WHERE job_id = ANY($1::uuid[]) AND attempt > 1",
            [j.job_id for j in jobs],
        )
        charged = await conn.fetchval(
            "SELECT count(*) FROM reputation_events WHERE node_id = $1 AND kind = 'timed_out'",
            hung,
        )
    finally:
        await conn.close()
    assert rerouted > 0
    assert charged > 0


async def test_two_routers_and_two_guards_share_the_work(models_dir: Path, tmp_path: Path) -> None:
    settings = make_settings(models_dir)
    migrate.upgrade(settings)
    await setup_brokers(settings)
    fleet = Fleet(settings, nodes=3, routers=2, guards=2, log_dir=tmp_path / "logs")
    nodes: list[str] = []
    try:
        fleet.start()
        nodes = await asyncio.to_thread(fleet.wait_ready)
        jobs = [JobRequest(inputs=[f"shared {i}"], redundancy=3) for i in range(40)]
        async with Client(settings) as client:
            verdicts = await client.run_many(jobs, timeout_s=60)
        assert [v.status for v in verdicts] == ["verified"] * len(jobs)
        counts = await _settled(settings)
        assert counts["verdicts"] == len(jobs)
        assert counts["assignments"] == 3 * len(jobs)
        # Every replica answered and was scored exactly once, whichever guard took it.
        assert counts["results"] == counts["events"] == counts["assignments"]
    finally:
        await asyncio.to_thread(fleet.stop)
        await teardown_brokers(settings, [(n, "cpu-int8") for n in nodes])
        migrate.drop_database(settings)
