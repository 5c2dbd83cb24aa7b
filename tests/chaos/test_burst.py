"""A burst of about ten times what the fleet can do: overload is bounded (docs/design.md,
Overload).

The client submits embed jobs at redundancy 3 far faster than three nodes can answer
them. The router takes jobs only while the nodes hold less than half an assignment
window of work (cortensor.protocol.admission); the rest wait in its queue, whose bound
(a policy lowers it to BOUND jobs here) makes RabbitMQ refuse what comes past it, which
the SDK raises as Busy. So: every refused job is refused as Busy; every accepted job is
decided within its deadline plus 30 s, none twice; no honest node is charged (nothing
queued at a node outlives its assignment window); and no process's peak memory grows by
more than GROWTH_MIB during the burst, however long it lasts.

The CI scenario bursts for BURST_S seconds; the 60 s one is `chaos_full` (`ops/chaos`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import Load, Network, Tally, assert_nothing_lost, drive
from tests.chaos.load import MemorySampler

pytestmark = [pytest.mark.slow, pytest.mark.models, pytest.mark.e2e, pytest.mark.timeout(900)]

BOUND = 200
"""Jobs the router's queue holds in this scenario: about what three nodes on this
machine decide in 10 s, well within the 30 s of grace a deadline is given."""
RATE = 250.0
"""Jobs submitted per second: about ten times what the fleet decides here (three
nodes at redundancy 3 on this 2-core machine, with other tests beside it, decided 24
jobs/s in a burst; each scenario prints what it measured)."""
BURST_S = 10.0
GROWTH_MIB = {"router.1": 150.0, "guard.1": 150.0, "node": 200.0, "rabbitmq": 400.0}
"""How much each process's peak resident memory may grow during a burst (nodes, and
every other process under its own name's prefix)."""


@pytest.fixture
def bounded(net: Network) -> Iterator[Network]:
    """The router's queue bounded at BOUND jobs for the scenario (a policy: the queue was
    declared with Settings.router_queue_max, and the lower of the two applies)."""
    queue = f"{net.admin.namespace}.router"
    name = f"{queue}.burst"
    definition = json.dumps({"max-length": BOUND, "overflow": "reject-publish"})
    done = net.rabbitmq.ctl(
        "set_policy", "--apply-to", "queues", name, f"^{re.escape(queue)}$", definition
    )
    assert done.returncode == 0, done.stderr
    yield net
    net.rabbitmq.ctl("clear_policy", name)


def _gate_closings(router_log: Path) -> int:
    """How often the router stopped taking jobs for want of room (its log)."""
    if not router_log.exists():
        return 0
    return router_log.read_text(errors="replace").count("fleet full")


def _growth_allowed(name: str) -> float:
    for prefix, mib in GROWTH_MIB.items():
        if name.startswith(prefix):
            return mib
    return GROWTH_MIB["rabbitmq"]


async def _burst(net: Network, seconds: float) -> tuple[Tally, dict[str, float]]:
    before = MemorySampler(net.pids)
    before.sample()
    router_log = net.fleet.log_dir / "router.1.log"
    closed_before = _gate_closings(router_log)
    load = Load(jobs=int(RATE * seconds), rate=RATE, deadline_s=60.0)
    tally = await drive(
        f"burst of {RATE:g} jobs/s for {seconds:g} s (router queue {BOUND})",
        admin=net.admin,
        client=net.client,
        load=load,
        pids=net.pids,
    )
    net.observe(tally).report()
    growth = {name: tally.peak_mib.get(name, 0.0) - mib for name, mib in before.peak_mib.items()}
    decided = sum(tally.verdicts.values())
    print(
        "BURST",
        json.dumps(
            {
                "growth_mib": {k: round(v, 1) for k, v in sorted(growth.items())},
                "decided_per_s": round(decided / tally.wall_s, 1),
                "overload": round(RATE / (decided / tally.wall_s), 1),
                "admission_closed": _gate_closings(router_log) - closed_before,
            }
        ),
    )
    return tally, growth


def _check(tally: Tally, growth: dict[str, float]) -> None:
    not_busy = [e for e in tally.refused if not e.startswith("Busy:")]
    kinds = Counter(e.split(":", 1)[0] for e in tally.refused)
    assert not not_busy, f"refused other than busy: {dict(kinds)}, {not_busy[:2]}"
    assert tally.refused, f"a burst the fleet took whole is no burst; {tally.summary()}"
    assert tally.accepted >= BOUND, tally.summary()
    assert_nothing_lost(tally)
    assert not tally.exited, tally.exited
    over = {n: g for n, g in growth.items() if g > _growth_allowed(n)}
    assert not over, f"memory grew past its bound (MiB): {over}; {tally.summary()}"


async def test_a_burst_is_refused_as_busy_past_the_bound_and_nothing_is_lost(
    bounded: Network,
) -> None:
    tally, growth = await _burst(bounded, BURST_S)
    _check(tally, growth)


@pytest.mark.chaos_full
async def test_a_sixty_second_burst_keeps_memory_bounded(bounded: Network) -> None:
    tally, growth = await _burst(bounded, 60.0)
    _check(tally, growth)
