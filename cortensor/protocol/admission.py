"""Admission: how much work the router may hand the fleet before it stops taking jobs.
Pure arithmetic on what heartbeats and the ledger say; no clock of its own.

A node works through what it holds one assignment after another. Work queued behind
more than an assignment window's worth would time out on an honest node, which would
then be charged for the network's overload. So each node gets a limit on the
assignments it holds: what it finished per second lately (the `processed` count of its
heartbeats) times a quarter of the assignment window, and never less than FLOOR. The router
takes a batch of jobs only while at least `REPLICAS` live nodes (or every live node, if
fewer) are under their limit; otherwise it leaves them in its queue, which is bounded
(Settings.router_queue_max, reject-publish), so that a burst past the fleet's capacity
ends at the client as Busy rather than as late work, timeouts and charges.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

FLOOR = 32
"""The least a node may hold: one of the router's batches, so that a fleet whose speed
is not known yet (a node just started, or idle) is never throttled below it."""
HEADROOM = 0.25
"""The share of the assignment window a node's queue may fill at its measured speed: a
node that slows down four times (a busy host) still finishes what it holds in time. It
costs no throughput: a node needs to hold only its speed times one job's latency (well
under a second) to stay busy."""
RATE_WEIGHT = 0.3
"""Weight of the newest speed sample in the running average (about the last few
heartbeats)."""


def speed(previous: float, done: int, seconds: float) -> float:
    """The running average of assignments finished per second, given `done` more over
    the last `seconds`."""
    if seconds <= 0 or done < 0:
        return previous
    return (1 - RATE_WEIGHT) * previous + RATE_WEIGHT * (done / seconds)


def limit(rate: float, window_s: float) -> int:
    """The most assignments a node finishing `rate` per second may hold with an
    assignment window of `window_s` seconds."""
    return max(FLOOR, math.floor(rate * window_s * HEADROOM))


def has_room(holding: Iterable[tuple[int, int]], need: int) -> bool:
    """Whether at least `need` nodes (or every one, when fewer are live) hold less than
    their limit; `holding` is (assignments held, limit) for each live node. A fleet
    with no live node is open: its jobs wait in the ledger for nodes as before."""
    nodes = list(holding)
    free = sum(1 for held, most in nodes if held < most)
    return not nodes or free >= min(need, len(nodes))


def holding(
    inflight: Mapping[str, int], rates: Mapping[str, float], window_s: float
) -> list[tuple[int, int]]:
    """(assignments held, limit) for each node of `inflight`."""
    return [(held, limit(rates.get(node, 0.0), window_s)) for node, held in inflight.items()]
