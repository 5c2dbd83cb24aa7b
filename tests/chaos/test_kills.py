"""kill -9 of the fleet's processes at random moments in the middle of a run.

Each scenario submits embed jobs at redundancy 3 through the SDK while processes of the
fleet are killed with SIGKILL and started again, and asserts that no job is lost (every
accepted job has its verdict within its deadline plus 30 s), no job has two verdicts,
and no honest node is punished: only a killed node may be charged, for the work it
dropped, and no node is quarantined. The moments are random; the seed is printed with
the summary, and CORTENSOR_CHAOS_SEED replays it.
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import (
    Load,
    Network,
    assert_nothing_lost,
    drive,
    kill_at_random,
    seeded,
)

pytestmark = [pytest.mark.slow, pytest.mark.models, pytest.mark.e2e, pytest.mark.timeout(600)]


async def test_kill9_a_node_the_router_and_the_guard_during_one_run(net: Network) -> None:
    """The CI scenario: one run, each kind of process killed once at a random moment."""
    seed, rng = seeded()
    load = Load(jobs=150, rate=5.0, deadline_s=90.0)
    node = rng.choice([n for n in net.fleet.names() if n.startswith("node.")])
    tally = await drive(
        "kill -9 of a node, the router and the guard",
        admin=net.admin,
        client=net.client,
        load=load,
        disturbances=[
            kill_at_random(net.fleet, node, within=(2, 9), down_s=2, rng=rng),
            kill_at_random(net.fleet, "router.1", within=(10, 18), down_s=1, rng=rng),
            kill_at_random(net.fleet, "guard.1", within=(19, 27), down_s=1, rng=rng),
        ],
        pids=net.pids,
    )
    tally.seed = seed
    net.observe(tally).report()
    assert len(tally.kills) == 3, tally.kills
    assert tally.accepted == load.jobs, tally.refused[:3]
    assert_nothing_lost(tally)


@pytest.mark.chaos_full
@pytest.mark.parametrize(
    ("process", "frozen_s"),
    [
        ("node.1", 0.0),
        ("router.1", 0.0),
        # Frozen first, so that a kill finds it holding fetched results more often (a
        # random moment finds it so only now and then: it commits within milliseconds).
        ("guard.1", 3.0),
    ],
)
async def test_kill9_one_process_again_and_again(
    net: Network, process: str, frozen_s: float
) -> None:
    """A longer run in which one process is killed three times at random moments."""
    seed, rng = seeded()
    load = Load(jobs=300, rate=5.0, deadline_s=90.0)

    async def kills() -> None:
        for _ in range(3):  # all within the 60 s of submissions
            await kill_at_random(
                net.fleet, process, within=(5, 12), down_s=1, frozen_s=frozen_s, rng=rng
            )

    frozen = f", frozen {frozen_s:g} s first" if frozen_s else ""
    tally = await drive(
        f"kill -9 of {process} three times{frozen}",
        admin=net.admin,
        client=net.client,
        load=load,
        disturbances=[kills()],
        pids=net.pids,
    )
    tally.seed = seed
    net.observe(tally).report()
    assert len(tally.kills) == 3, tally.kills
    assert tally.accepted == load.jobs, tally.refused[:3]
    assert_nothing_lost(tally)
