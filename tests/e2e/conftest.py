"""The fleet every end-to-end test shares: started once from the Procfile.

Three honest nodes (`honcho start -c node=3`) and one node that answers every task
wrongly (random vectors, labels and words).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cortensor.adapters.ledger import migrate
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.settings import Settings
from cortensor.tools.fleet import Fleet
from tests.conftest import make_settings

DISHONEST = "dishonest-random-1"


@contextmanager
def running_fleet(
    models_dir: Path,
    log_dir: Path,
    *,
    nodes: int,
    extra_nodes: list[list[str]],
    env: dict[str, str],
    admitted: int | None = None,
    gateways: int = 0,
    generators: int = 0,
) -> Iterator[tuple[Settings, Fleet]]:
    """A fleet on a namespace and ledger of its own, started from the Procfile with
    `nodes` nodes plus `extra_nodes` (their `cortensor node` arguments) and `gateways`
    gateways, torn down after."""
    settings = make_settings(models_dir)
    migrate.upgrade(settings)
    asyncio.run(setup_brokers(settings))
    fleet = Fleet(
        settings,
        nodes=nodes,
        extra_nodes=extra_nodes,
        gateways=gateways,
        generators=generators,
        log_dir=log_dir,
        env=env,
    )
    started: list[str] = []
    try:
        fleet.start()
        started = fleet.wait_ready(admitted=admitted)
        yield settings, fleet
    finally:
        fleet.stop()
        asyncio.run(teardown_brokers(settings, [(n, "cpu-int8") for n in started]))
        migrate.drop_database(settings)


@pytest.fixture(scope="package")
def fleet(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Fleet]]:
    with running_fleet(
        models_dir,
        tmp_path_factory.mktemp("fleet-logs"),
        nodes=3,
        extra_nodes=[["--fault", "random", "--fault-rate", "1.0", "--node-id", DISHONEST]],
        env={
            # Short, so that the hung-node test sees replicas re-routed within seconds.
            "CORTENSOR_ASSIGNMENT_TIMEOUT_S": "2",
            # Four nodes share two cores here: give audio chunks room on top of that.
            "CORTENSOR_AUDIO_TIMEOUT_FACTOR": "2",
            # Parts of one window (30 s), so that the long-speech test sees a file split
            # across nodes: with batching nodes, four nodes at redundancy 3 get 79 s as one
            # part (docs/design.md, "One long file"; tests/integration/test_whisper_batched.py).
            "CORTENSOR_WHISPER_BATCH_SIZE": "0",
        },
    ) as started:
        yield started
