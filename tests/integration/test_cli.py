"""The operator commands, run as a user would run them, against the real services."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from nats.js.errors import NotFoundError

from cortensor.adapters import jetstream
from cortensor.adapters.ledger import migrate
from cortensor.adapters.principals import rabbit
from cortensor.adapters.principals.grants import namespace_prefix
from cortensor.adapters.provision import teardown_brokers
from cortensor.adapters.topology import Topology
from cortensor.schemas import JobReceipt, Verdict
from cortensor.settings import Settings
from tests.conftest import make_settings, run_cortensor, unique_name

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.nats]


async def _stream_names(settings: Settings) -> set[str]:
    nc = await jetstream.connect(settings.nats_url, name="test-cli")
    try:
        js = nc.jetstream()
        names = set()
        for stream in Topology(settings.namespace).streams:
            with contextlib.suppress(NotFoundError):
                names.add((await js.stream_info(stream.name)).config.name or "")
        return names
    finally:
        await nc.drain()


def test_db_upgrade_creates_the_database_then_is_a_no_op() -> None:
    settings = make_settings()
    try:
        first = run_cortensor(settings, "db", "upgrade")
        assert first.returncode == 0, first.stderr
        assert "created and migrated" in first.stdout
        again = run_cortensor(settings, "db", "upgrade")
        assert again.returncode == 0, again.stderr
        assert "created" not in again.stdout
        head = ScriptDirectory.from_config(migrate.alembic_config(settings)).get_current_head()
        assert migrate.current(settings) == head
    finally:
        migrate.drop_database(settings)


def test_brokers_setup_declares_the_topology_idempotently() -> None:
    settings = make_settings()
    try:
        for _ in range(2):
            done = run_cortensor(settings, "brokers", "setup")
            assert done.returncode == 0, done.stderr
            assert (
                f"queue {settings.namespace}.router <- {settings.namespace}.submit[job.*]"
                in done.stdout
            )
        assert asyncio.run(_stream_names(settings)) == {
            f"{settings.namespace}-results",
            f"{settings.namespace}-verdicts",
        }
    finally:
        asyncio.run(teardown_brokers(settings))


def test_brokers_teardown_removes_the_namespace_its_node_queues_and_principals(
    ledger_settings: Settings, tmp_path: Path
) -> None:
    settings = ledger_settings.model_copy(update={"namespace": unique_name("td")})
    topology = Topology(settings.namespace)
    assert run_cortensor(settings, "brokers", "setup").returncode == 0
    issued = run_cortensor(
        settings, "credentials", "issue", "node", "n1", "--out", str(tmp_path / "n1.json")
    )
    assert issued.returncode == 0, issued.stderr
    node_queue = topology.node_queue("n1", "cpu-int8").name  # named by the id alone
    assert node_queue in rabbit.queues()

    refused = run_cortensor(settings, "brokers", "teardown")
    assert refused.returncode != 0
    assert "--yes" in refused.stderr
    assert node_queue in rabbit.queues()  # nothing deleted without it

    done = run_cortensor(settings, "brokers", "teardown", "--yes")
    assert done.returncode == 0, done.stderr
    assert "1 node queues" in done.stdout
    left = [q for q in rabbit.queues() if q.startswith(f"{settings.namespace}.")]
    assert left == []
    assert asyncio.run(_stream_names(settings)) == set()
    prefix = namespace_prefix(settings.namespace)
    assert [u for u in rabbit.users() if u.startswith(prefix)] == []


def test_a_bad_setting_is_named() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "cortensor"), "report", "nodes"],
        env={**os.environ, "CORTENSOR_NAMESPACE": "Not A Namespace"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "namespace" in done.stderr


def test_node_refuses_a_bad_node_id_before_loading_anything() -> None:
    done = run_cortensor(make_settings(), "node", "--node-id", "has.dots")
    assert done.returncode == 2
    assert "--node-id" in done.stderr


async def _publish(settings: Settings, subject: str, message: JobReceipt | Verdict) -> None:
    """Publish as the router or a guard would (the session is the operator's)."""
    nc = await jetstream.connect_as(settings, name="test-cli-publish")
    try:
        data = message.model_dump_json().encode()
        await jetstream.publish(nc.jetstream(), subject, data, msg_id=subject)
    finally:
        await nc.drain()


def test_result_tells_unknown_pending_and_decided_jobs_apart() -> None:
    settings = make_settings()
    topology, owner = Topology(settings.namespace), Settings().principal
    try:
        assert run_cortensor(settings, "brokers", "setup").returncode == 0
        job_id = uuid.uuid4()
        unknown = run_cortensor(settings, "result", str(job_id))
        assert unknown.returncode == 6, unknown.stderr
        assert f"the network has no record of job {job_id} (never submitted" in unknown.stderr

        receipt = JobReceipt(job_id=job_id, owner=owner)
        asyncio.run(_publish(settings, topology.receipt_subject(str(job_id), owner=owner), receipt))
        pending = run_cortensor(settings, "result", str(job_id))
        assert pending.returncode == 5, pending.stderr
        accepted_at = receipt.created_at.isoformat(timespec="seconds")
        assert f"job {job_id} accepted at {accepted_at}, not decided yet" in pending.stderr

        verdict = Verdict(job_id=job_id, owner=owner, status="failed", reason="no node")
        asyncio.run(_publish(settings, topology.verdict_subject(verdict), verdict))
        decided = run_cortensor(settings, "result", str(job_id))
        assert decided.returncode == 0, decided.stderr
        assert f"job {job_id}: failed" in decided.stdout
    finally:
        asyncio.run(teardown_brokers(settings))


@pytest.mark.parametrize("command", [["result", str(uuid.uuid4())], ["brokers", "setup"]])
def test_an_unreachable_nats_is_named_in_one_line(command: list[str]) -> None:
    settings = make_settings()
    try:
        assert run_cortensor(settings, "brokers", "setup").returncode == 0
        env = {
            # No credentials file: its NATS URL would win over the variable.
            "CORTENSOR_CREDENTIALS": "",
            "CORTENSOR_AMQP_URL": settings.amqp_url,
            "CORTENSOR_NAMESPACE": settings.namespace,
            "CORTENSOR_NATS_URL": "nats://127.0.0.1:1",
            "CORTENSOR_CONNECT_TIMEOUT_S": "1",
        }
        done = subprocess.run(
            [str(Path(sys.executable).parent / "cortensor"), *command],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 3, done.stderr
        assert done.stderr.strip().splitlines() == [
            "error: cannot reach NATS at 127.0.0.1:1: check CORTENSOR_NATS_URL or your"
            " credentials file"
        ]
    finally:
        asyncio.run(teardown_brokers(settings))
