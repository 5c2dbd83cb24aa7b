"""Choosing the nodes for a job: pure policy, no I/O.

Among the live nodes of an eligible class that serve the model, a node's weight is
its reputation squared times its spare capacity. k distinct nodes are drawn by weighted
sampling without replacement (Efraimidis-Spirakis keys), so that good, idle nodes
are preferred while no node can predict whether it will be checked alone.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from cortensor.errors import NoEligibleNodes

SPARE_FLOOR = 0.25


@dataclass(frozen=True, slots=True)
class NodeView:
    """What a router knows about one node."""

    node_id: str
    hw_class: str
    models: frozenset[str]
    last_seen: float
    """Monotonic-clock seconds of the node's last heartbeat."""
    score: float = 0.5
    capacity: int = 1
    inflight: int = 0
    draining: bool = False
    trust: str = "active"
    """probation and quarantined nodes get known-answer probes only, no real jobs."""
    streaks: Mapping[str, int] = field(default_factory=dict, hash=False)
    """Its run of valid results per model."""

    def live(self, now: float, ttl: float) -> bool:
        """Whether the node announced itself recently and is not leaving."""
        return not self.draining and now - self.last_seen <= ttl

    @property
    def spare(self) -> float:
        """Free share of its capacity plus a floor, so that busy nodes stay eligible and a
        full node is still preferred to an idle one with a much worse record."""
        return max(self.capacity - self.inflight, 0) / self.capacity + SPARE_FLOOR


def candidates(
    nodes: Iterable[NodeView],
    *,
    classes: Collection[str],
    model: str,
    now: float,
    ttl: float,
    exclude: Collection[str] = (),
) -> list[NodeView]:
    """The nodes that may take a replica of a real job (active ones)."""
    return [
        n
        for n in nodes
        if n.trust == "active"
        and n.hw_class in classes
        and model in n.models
        and n.live(now, ttl)
        and n.node_id not in exclude
    ]


def weight(node: NodeView, temperature: float) -> float:
    """How strongly a node is preferred; temperature 0 is greedy, higher is flatter.

    Reputation counts twice (squared): a node with half the score needs four times the
    spare capacity to be preferred, so load never hands work to a known cheat.
    """
    merit = max(node.score, 1e-6) ** 2 * node.spare
    return merit ** (1.0 / temperature) if temperature > 0 else merit


def _key(u: float, w: float) -> float:
    # log(u^(1/w)) = log(u)/w; a weight that underflowed to 0 sorts last.
    return math.log(max(u, 1e-300)) / w if w > 0 else -math.inf


def choose(
    pool: Collection[NodeView],
    k: int,
    *,
    rng: random.Random,
    temperature: float = 1.0,
) -> list[NodeView]:
    """Pick k distinct nodes from the pool, weighted by reputation and spare capacity.

    Raises NoEligibleNodes when the pool has fewer than k nodes.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    if len(pool) < k:
        raise NoEligibleNodes(f"needs {k} distinct live nodes, {len(pool)} eligible")
    if temperature <= 0:
        ranked = sorted(pool, key=lambda n: (-weight(n, 0), n.node_id))
        return ranked[:k]
    # Efraimidis-Spirakis: key = u^(1/w); the k largest keys are a weighted sample.
    keyed = [(_key(rng.random(), weight(n, temperature)), n.node_id, n) for n in pool]
    keyed.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [n for _, _, n in keyed[:k]]
