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
from cortensor.adapters.provision import teardown_brokers
from cortensor.adapters.topology import Topology
from cortensor.settings import Settings
from tests.conftest import make_settings, run_cortensor

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


def test_a_job_without_a_verdict_yet_exits_3_try_again_later() -> None:
    settings = make_settings()
    try:
        assert run_cortensor(settings, "brokers", "setup").returncode == 0
        job_id = str(uuid.uuid4())
        done = run_cortensor(settings, "result", job_id)
        assert done.returncode == 3, done.stderr
        assert f"no verdict yet for job {job_id}" in done.stderr
    finally:
        asyncio.run(teardown_brokers(settings))
