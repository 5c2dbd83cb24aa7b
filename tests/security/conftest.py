"""The secured fleet every attack runs against: started once, on issued credentials.

Three honest nodes, a router and a guard from the Procfile (tools/fleet.py issues their
credentials), plus the principals that attack: a registered node `attacker-1` of its
own, which runs no process (the tests act with its credentials), and two clients, the
one whose jobs are targeted and another who tries to act as or read the first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortensor.adapters.ledger import migrate
from cortensor.adapters.provision import setup_brokers, teardown_brokers
from cortensor.adapters.topology import Topology
from cortensor.tools.credentials import revoke_namespace
from cortensor.tools.fleet import Fleet
from tests.conftest import make_settings
from tests.security.harness import HW_CLASS, SecuredFleet, issue, principal

ATTACKER = "attacker-1"
CLIENT = "alice"
OTHER_CLIENT = "mallory"
ROOM = {"CORTENSOR_AUDIO_TIMEOUT_FACTOR": "4", "CORTENSOR_ASSIGNMENT_TIMEOUT_S": "20"}
"""Three nodes share two cores here, with other test runs beside them: their admission
probes (transcriptions among them) get room, so that a busy machine does not fail them."""


@pytest.fixture(scope="package")
def secured(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredFleet]:
    settings = make_settings(models_dir)
    migrate.upgrade(settings)
    asyncio.run(setup_brokers(settings))
    log_dir = tmp_path_factory.mktemp("secured-fleet")
    keys = tmp_path_factory.mktemp("attackers")
    fleet = Fleet(settings, nodes=3, log_dir=log_dir, env=ROOM)
    started: list[str] = []
    try:
        fleet.start()
        started = fleet.wait_ready(timeout_s=240.0)
        attacker = issue(
            settings, "node", ATTACKER, keys / f"{ATTACKER}.json", "--hw-class", HW_CLASS
        )
        client = issue(settings, "client", CLIENT, keys / f"{CLIENT}.json")
        other = issue(settings, "client", OTHER_CLIENT, keys / f"{OTHER_CLIENT}.json")
        operators = {
            kind: principal(log_dir / f"{kind}.json", models_dir)
            for kind in ("router", "guard", "reports", "gateway")
        }
        yield SecuredFleet(
            admin=settings,
            topology=Topology(settings.namespace),
            nodes=tuple(started),
            attacker=attacker,
            client=client,
            other_client=other,
            operators=operators,
        )
    finally:
        fleet.stop()
        revoke_namespace(settings)
        queues = [(n, HW_CLASS) for n in [*started, ATTACKER]]
        asyncio.run(teardown_brokers(settings, queues))
        migrate.drop_database(settings)
