"""The fleet every end-to-end test shares: started once from the Procfile.

Three honest nodes (`honcho start -c node=3`) and one node that answers every task
wrongly (random vectors, labels and words).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortensor.fleet import Fleet
from cortensor.ledger import migrate
from cortensor.provision import setup_brokers, teardown_brokers
from cortensor.settings import Settings
from tests.conftest import make_settings

DISHONEST = "dishonest-random-1"


@pytest.fixture(scope="package")
def fleet(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, Fleet]]:
    settings = make_settings(models_dir)
    migrate.upgrade(settings)
    asyncio.run(setup_brokers(settings))
    fleet = Fleet(
        settings,
        nodes=3,
        extra_nodes=[["--fault", "random", "--fault-rate", "1.0", "--node-id", DISHONEST]],
        log_dir=tmp_path_factory.mktemp("fleet-logs"),
        env={
            # Short, so that the hung-node test sees replicas re-routed within seconds.
            "CORTENSOR_ASSIGNMENT_TIMEOUT_S": "2",
            # Four nodes share two cores here: give audio chunks room on top of that.
            "CORTENSOR_AUDIO_TIMEOUT_FACTOR": "2",
        },
    )
    nodes: list[str] = []
    try:
        fleet.start()
        nodes = fleet.wait_ready()
        yield settings, fleet
    finally:
        fleet.stop()
        asyncio.run(teardown_brokers(settings, [(n, "cpu-int8") for n in nodes]))
        migrate.drop_database(settings)
