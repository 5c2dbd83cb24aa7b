"""The outages of issue 10 as measured there: PostgreSQL, then NATS, then RabbitMQ, each
down for 15 s in turn, in the middle of one run, on a fleet with the default 10 s
assignment windows, so that every outage outlasts the windows of the work in flight.

Nothing may be lost, every job must end within its deadline plus 30 s, no node may be
charged or quarantined, no submission may fail to the caller and no process may exit
(see docs/design.md, Outages).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import (
    Load,
    Network,
    assert_nothing_lost,
    assert_rides_through,
    down_for,
    drive,
    private_network,
    seeded,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.models,
    pytest.mark.e2e,
    pytest.mark.chaos_full,
    pytest.mark.timeout(900),
]

OUTAGE_S = 15.0
WINDOWS = {"CORTENSOR_ASSIGNMENT_TIMEOUT_S": "10", "CORTENSOR_AUDIO_TIMEOUT_FACTOR": "20"}
"""The default assignment window for the embed jobs, shorter than each outage; room
for the admission probes' audio on a busy machine (20 s per second of audio)."""


@pytest.fixture(scope="module")
def short_windows(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A network of this module's own, its fleet on the default assignment windows."""
    root = tmp_path_factory.mktemp("outages")
    with private_network(root, models_dir, nodes=3, env=WINDOWS) as net:
        yield net


async def test_each_server_down_15_s_in_turn_under_load(short_windows: Network) -> None:
    net = short_windows
    seed, rng = seeded()
    servers = {server.name: server for server in net.servers}
    outages: dict[str, float] = {}

    async def in_turn(r: random.Random) -> None:
        await asyncio.sleep(r.uniform(2, 4))
        for name in ("postgresql", "nats", "rabbitmq"):
            outages[name] = await down_for(servers[name], OUTAGE_S)
            await asyncio.sleep(r.uniform(2, 4))

    tally = await drive(
        "postgresql, nats, rabbitmq down 15 s in turn",
        admin=net.admin,
        client=net.client,
        load=Load(jobs=300, rate=6.0, deadline_s=90.0, grace_s=30.0),
        disturbances=[in_turn(rng)],
        pids=net.pids,
    )
    tally.outages = outages
    tally.seed = seed
    tally = net.observe(tally)
    tally.report()
    assert sorted(outages) == ["nats", "postgresql", "rabbitmq"]
    assert all(seconds >= OUTAGE_S for seconds in outages.values())
    assert_nothing_lost(tally)
    assert_rides_through(tally)
