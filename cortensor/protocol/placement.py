"""Choosing the nodes for a job: pure policy, no I/O.

Among the live nodes of an eligible class that serve the model, a node's weight is
its reputation squared times its spare capacity. Nodes are drawn by weighted sampling
without replacement (Efraimidis-Spirakis keys), so that good, idle nodes are preferred
while no node can predict whether it will be checked alone.

Newcomers never outvote established nodes. A node is established for a model once its
streak of valid results reaches ESTABLISHED_STREAK; until then it is a newcomer, and a
job of redundancy k takes at most k // 2 newcomers (`newcomer_room`), fewer than a strict
majority, and its leader is an established node. Only when too few established nodes
are live (a network starting up) do newcomers fill the places left. A fresh identity
therefore starts with no say: a Sybil that re-registers gets a few checker places, in
which it is always outvoted, until it has answered ESTABLISHED_STREAK checked jobs right.

`choose` draws from a list of NodeView; `Sampler` and `Ranking` draw the same sample over
a whole fleet held in numpy arrays (the simulation), with the same rule.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from cortensor.errors import NoEligibleNodes
from cortensor.protocol.replication import ESTABLISHED_STREAK

SPARE_FLOOR = 0.25
NEWCOMER_WEIGHT = 0.1
"""A newcomer's weight, relative to an established node's with the same score and spare
capacity: like BOINC's small daily quota for a new host, it gets a tenth of the places
it would otherwise, so a stream of fresh identities costs the network little."""

T = TypeVar("T")


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
    offences: int = 0
    """Its quarantines for wrong answers: a node with one is never trusted alone."""

    def live(self, now: float, ttl: float) -> bool:
        """Whether the node announced itself recently and is not leaving."""
        return not self.draining and now - self.last_seen <= ttl

    @property
    def spare(self) -> float:
        """Free share of its capacity plus a floor, so that busy nodes stay eligible and a
        full node is still preferred to an idle one with a much worse record."""
        return max(self.capacity - self.inflight, 0) / self.capacity + SPARE_FLOOR


def is_established(streak: int) -> bool:
    """Whether a node with this run of valid results for a model is established."""
    return streak >= ESTABLISHED_STREAK


def established(node: NodeView, model: str) -> bool:
    """Whether the node is established for `model` (see the module's note)."""
    return is_established(int(node.streaks.get(model, 0)))


def newcomer_room(redundancy: int, newcomers: int = 0) -> int:
    """How many more newcomers a job of this redundancy may take when `newcomers` of its
    replicas are newcomers already: together fewer than a strict majority."""
    return max(redundancy // 2 - newcomers, 0)


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


def weight(node: NodeView, temperature: float, model: str | None = None) -> float:
    """How strongly a node is preferred; temperature 0 is greedy, higher is flatter.

    Reputation counts twice (squared): a node with half the score needs four times the
    spare capacity to be preferred, so load never hands work to a known cheat. With
    `model` given, a newcomer for it weighs NEWCOMER_WEIGHT as much.
    """
    newcomer = model is not None and not established(node, model)
    return merit(node.score, node.spare, temperature, newcomer=newcomer)


def merit(score: float, spare: float, temperature: float, *, newcomer: bool = False) -> float:
    """`weight` from a node's score and spare capacity."""
    value = max(score, 1e-6) ** 2 * spare * (NEWCOMER_WEIGHT if newcomer else 1.0)
    return value ** (1.0 / temperature) if temperature > 0 else value


def weights(
    scores: npt.NDArray[np.float64],
    spare: float | npt.NDArray[np.float64] = 1.0 + SPARE_FLOOR,
    temperature: float = 1.0,
    newcomers: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float64]:
    """`merit` of many nodes at once, from their scores and spare capacities (an idle
    node of any capacity has 1 + SPARE_FLOOR) and which are newcomers."""
    value = np.maximum(scores, 1e-6) ** 2 * spare
    if newcomers is not None:
        value = np.where(newcomers, value * NEWCOMER_WEIGHT, value)
    return np.asarray(value ** (1.0 / temperature) if temperature > 0 else value)


def _key(u: float, w: float) -> float:
    # log(u^(1/w)) = log(u)/w; a weight that underflowed to 0 sorts last.
    return math.log(max(u, 1e-300)) / w if w > 0 else -math.inf


def pick(
    order: Iterable[T], k: int, *, newcomer: Callable[[T], bool] | None = None, room: int = 0
) -> list[T]:
    """The first k of `order` that the newcomer rule admits: every established node, at
    most `room` newcomers; newcomers passed over fill the places no established node is
    left for (a network starting up)."""
    chosen: list[T] = []
    passed: list[T] = []
    for item in order:
        if len(chosen) == k:
            break
        if newcomer is not None and newcomer(item):
            if room > 0:
                room -= 1
                chosen.append(item)
            else:
                passed.append(item)
        else:
            chosen.append(item)
    return chosen + passed[: k - len(chosen)]


def choose(
    pool: Collection[NodeView],
    k: int,
    *,
    rng: random.Random,
    temperature: float = 1.0,
    model: str | None = None,
    newcomers: int | None = None,
    fits: Callable[[NodeView], bool] | None = None,
) -> list[NodeView]:
    """Pick k distinct nodes from the pool, weighted by reputation and spare capacity.

    With `model` given, newcomers for it weigh NEWCOMER_WEIGHT as much; with `newcomers`
    too, at most that many of them are newcomers while established nodes are left
    (`pick`): pass 0 for a job's leader and `newcomer_room(redundancy, newcomers already
    on the job)` for its other replicas.
    With `fits` given, the nodes it accepts come before every other in the drawn order
    (each part keeping the draw's order): a node it refuses (one whose queue cannot
    finish the replica in time: planning.Timing.fits) is taken only when too few others
    are left. The newcomer rule still comes first.
    Raises NoEligibleNodes when the pool has fewer than k nodes.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    if len(pool) < k:
        raise NoEligibleNodes(f"needs {k} distinct live nodes, {len(pool)} eligible")
    if temperature <= 0:
        order = sorted(pool, key=lambda n: (-weight(n, 0, model), n.node_id))
    else:
        # Efraimidis-Spirakis: key = u^(1/w); the k largest keys are a weighted sample.
        keyed = [(_key(rng.random(), weight(n, temperature, model)), n.node_id, n) for n in pool]
        keyed.sort(key=lambda item: (item[0], item[1]), reverse=True)
        order = [n for _, _, n in keyed]
    if fits is not None:
        order.sort(key=lambda n: not fits(n))  # stable: each part keeps the draw's order
    if model is None or newcomers is None:
        return order[:k]
    return pick(order, k, newcomer=lambda n: not established(n, model), room=newcomers)


class Sampler:
    """Weighted sampling without replacement over a fleet, as `choose` does it.

    `choose` keeps the largest keys log(u) / w. With E = -log(u), an Exp(1) variate, that
    is the smallest E / w: exponentials are drawn in blocks and the inverse weights kept
    in an array updated node by node, so a draw costs a few numpy calls over the fleet
    instead of a Python loop. A node of weight 0 never comes out.
    """

    BLOCK = 512

    def __init__(self, weights: npt.NDArray[np.float64], rng: np.random.Generator) -> None:
        self._inverse = np.full(len(weights), np.inf)
        for node, w in enumerate(weights):
            self.update(node, float(w))
        self._rng = rng
        self._block = np.empty((0, len(weights)))
        self._row = 0

    def update(self, node: int, weight: float) -> None:
        """Set one node's weight (0 takes it out of the draws)."""
        self._inverse[node] = 1.0 / weight if weight > 0 else np.inf

    def ranking(self, exclude: int | None = None) -> Ranking:
        """A fresh random order of the nodes, read lazily: a weighted sample of any size
        is its first entries."""
        if self._row == len(self._block):
            # +tiny: an exponential of exactly 0 times an infinite inverse would be NaN.
            self._block = self._rng.standard_exponential((self.BLOCK, len(self._inverse)))
            self._block += 1e-300
            self._row = 0
        keys = self._block[self._row] * self._inverse
        self._row += 1
        if exclude is not None:
            keys[exclude] = np.inf
        return Ranking(keys)


class Ranking:
    """Nodes in increasing order of their sampling keys (E / w), computed only as far as
    read. Successive `take`s draw without replacement, each by the rule of `pick`."""

    HEAD = 16

    def __init__(self, keys: npt.NDArray[np.float64]) -> None:
        self._keys = keys
        self._order: list[int] = []
        self._complete = False
        self._used: list[int] = []

    def take(
        self, n: int, *, newcomers: npt.NDArray[np.bool_] | None = None, room: int = 0
    ) -> list[int]:
        """The next n nodes of the sample by the rule of `pick`, `newcomers` marking the
        newcomers (fewer nodes when the fleet runs out). Newcomers passed over stay
        available to later takes."""
        if n < 1:
            return []
        chosen = self._from_head(n, newcomers, room)
        if chosen is None:
            chosen = self._from_all(n, newcomers, room)
        self._used += chosen
        return chosen

    def _from_head(
        self, n: int, newcomers: npt.NDArray[np.bool_] | None, room: int
    ) -> list[int] | None:
        """The sample read from the sorted head of the order (the usual case: a leader, a
        checker or two), or None when the head does not hold it."""
        for depth in (1, self.HEAD):
            if len(self._order) < depth and not self._complete:
                self._extend(depth)
            chosen: list[int] = []
            passed: list[int] = []
            left = room
            for node in self._order:
                if len(chosen) == n:
                    break
                if node in self._used:
                    continue
                if newcomers is not None and newcomers[node]:
                    if left > 0:
                        left -= 1
                        chosen.append(node)
                    else:
                        passed.append(node)
                else:
                    chosen.append(node)
            if len(chosen) == n:
                return chosen
            if self._complete:
                return chosen + passed[: n - len(chosen)]
        return None

    def _from_all(self, n: int, newcomers: npt.NDArray[np.bool_] | None, room: int) -> list[int]:
        """The same sample computed over the whole fleet at once."""
        keys = self._keys.copy()
        keys[self._used] = np.inf
        if newcomers is None:
            return _smallest(keys, n)
        settled = _smallest(np.where(newcomers, np.inf, keys), n)
        # Newcomers come in as the admitted `room`, then to fill what is left of n.
        fresh = _smallest(np.where(newcomers, keys, np.inf), n + room)
        admitted = sorted(settled + fresh[:room], key=lambda i: keys[i])[:n]
        return admitted + fresh[room:][: n - len(admitted)]

    def _extend(self, depth: int) -> None:
        keys = self._keys
        size = len(keys)
        depth = min(depth, size)
        if depth == 1:
            top = [int(np.argmin(keys))]
        else:
            part = np.argpartition(keys, depth - 1)[:depth] if depth < size else np.arange(size)
            top = [int(i) for i in part[np.argsort(keys[part], kind="stable")]]
        self._order = [i for i in top if math.isfinite(keys[i])]
        self._complete = len(self._order) < len(top) or depth == size


def _smallest(keys: npt.NDArray[np.float64], n: int) -> list[int]:
    """Indices of the n smallest finite keys, in increasing order of key."""
    n = min(n, len(keys))
    if n < 1:
        return []
    part = np.argpartition(keys, n - 1)[:n] if n < len(keys) else np.arange(len(keys))
    part = part[np.argsort(keys[part], kind="stable")]
    return [int(i) for i in part[np.isfinite(keys[part])]]
