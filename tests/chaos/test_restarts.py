"""Each server away in the middle of a run: down for 15 s (a clean stop, then a start,
so the outage is 15 s plus the server's start-up), or killed with SIGKILL and started
again at once.

Each scenario submits embed jobs at redundancy 3 (90 s deadlines) through the SDK and
asserts that no job is lost, no job has two verdicts, no node is charged or
quarantined (an outage is no node's fault), no submission fails to the caller (the SDK
retries until the job's deadline) and no process of the fleet exits.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.chaos.harness import (
    Load,
    Network,
    Tally,
    assert_nothing_lost,
    assert_rides_through,
    down_for,
    drive,
    seeded,
)
from tests.chaos.servers import Server

pytestmark = [pytest.mark.slow, pytest.mark.models, pytest.mark.e2e, pytest.mark.timeout(600)]

OUTAGE_S = 15.0


def _server(net: Network, name: str) -> Server:
    return {server.name: server for server in net.servers}[name]


async def _outage(
    net: Network, name: str, *, seconds: float, hard: bool, rng: random.Random
) -> Tally:
    outages: dict[str, float] = {}

    async def away() -> None:
        await asyncio.sleep(rng.uniform(3, 8))
        outages[name] = await down_for(_server(net, name), seconds, hard=hard)

    how = "kill -9 and restart" if hard else f"down {seconds:g} s"
    tally = await drive(
        f"{name} {how}",
        admin=net.admin,
        client=net.client,
        load=Load(jobs=150, rate=5.0, deadline_s=90.0),
        disturbances=[away()],
        pids=net.pids,
    )
    tally.outages = outages
    return net.observe(tally)


@pytest.mark.parametrize(
    "name",
    [
        "postgresql",
        pytest.param("nats", marks=pytest.mark.chaos_full),
        pytest.param("rabbitmq", marks=pytest.mark.chaos_full),
    ],
)
async def test_a_server_down_for_15_s_under_load(net: Network, name: str) -> None:
    seed, rng = seeded()
    tally = await _outage(net, name, seconds=OUTAGE_S, hard=False, rng=rng)
    tally.seed = seed
    tally.report()
    assert tally.outages[name] >= OUTAGE_S
    assert_nothing_lost(tally)
    assert_rides_through(tally)


@pytest.mark.chaos_full
@pytest.mark.parametrize("name", ["postgresql", "nats", "rabbitmq"])
async def test_a_server_killed_and_restarted_under_load(net: Network, name: str) -> None:
    seed, rng = seeded()
    tally = await _outage(net, name, seconds=0.0, hard=True, rng=rng)
    tally.seed = seed
    tally.report()
    assert name in tally.outages
    assert_nothing_lost(tally)
    assert_rides_through(tally)
