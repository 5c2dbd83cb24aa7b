"""The router's view of the fleet: heartbeats merged with what the ledger says."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from cortensor.adapters.ledger.router import NodeStats
from cortensor.protocol.admission import speed
from cortensor.protocol.placement import NodeView
from cortensor.protocol.reputation import PRIOR_SCORE
from cortensor.schemas import NodeHeartbeat

HEARTBEAT_MAX_AGE_S = 60.0
"""How far a heartbeat's created_at may be from the router's clock, either way: an older
one is a replay (a signed 'draining' heard again to take a node out of service), a
newer one is made for a replay later. Wide enough for the clocks of honest hosts."""


def heartbeat_refusal(beat: NodeHeartbeat, now: datetime) -> str | None:
    """Why a heartbeat (signed by its node) is refused as a replay, or None."""
    age_s = (now - beat.created_at).total_seconds()
    if age_s > HEARTBEAT_MAX_AGE_S:
        return "stale heartbeat"
    if age_s < -HEARTBEAT_MAX_AGE_S:
        return "heartbeat from the future"
    return None


FORGET_AFTER_S = 600.0
"""A node not heard for this long is forgotten (it announces itself again when it comes
back), so that the registry holds the nodes of the last minutes, not every id ever seen."""


@dataclass(slots=True)
class _Entry:
    beat: NodeHeartbeat
    seen: float
    recorded: bool = False
    rate: float = 0.0
    """Assignments it finished per second lately (cortensor.protocol.admission.speed)."""


class NodeRegistry:
    """Nodes known from their heartbeats; only nodes recorded in the ledger are offered."""

    def __init__(self, forget_after_s: float = FORGET_AFTER_S) -> None:
        self.forget_after_s = forget_after_s
        self._nodes: dict[str, _Entry] = {}
        self._stats: dict[str, NodeStats] = {}
        self._assigned_since_refresh: Counter[str] = Counter()
        self._views: dict[str, NodeView] | None = None
        """The views of the recorded nodes, in the order of `_nodes` (None: made again
        at the next `views`). A heartbeat or an assignment changes one node's view in
        place; a node recorded anew, or fresh stats, have them made again."""

    def observe(self, beat: NodeHeartbeat, now: float) -> bool:
        """Take a heartbeat; True when the ledger must record the node before it is offered."""
        entry = self._nodes.get(beat.node_id)
        changed = entry is None or (
            (entry.beat.hw_class, entry.beat.models, entry.beat.status)
            != (beat.hw_class, beat.models, beat.status)
        )
        recorded = not changed and entry is not None and entry.recorded
        rate = 0.0
        if entry is not None and entry.beat.started_at == beat.started_at:
            rate = speed(entry.rate, beat.processed - entry.beat.processed, now - entry.seen)
        self._nodes[beat.node_id] = _Entry(beat, now, recorded=recorded, rate=rate)
        self._changed(beat.node_id)
        return not recorded

    def recorded(self, node_id: str) -> None:
        """The ledger now holds the node."""
        if node_id in self._nodes:
            self._nodes[node_id].recorded = True
            self._changed(node_id)

    def heartbeats(self) -> list[NodeHeartbeat]:
        """The last heartbeat of every node."""
        return [e.beat for e in self._nodes.values()]

    def update_stats(self, stats: dict[str, NodeStats]) -> None:
        """Fresh scores and outstanding counts from the ledger, kept for the nodes the
        registry holds (the ledger knows every node there ever was)."""
        self._stats = {n: stats[n] for n in self._nodes.keys() & stats.keys()}
        self._assigned_since_refresh.clear()
        self._views = None

    def prune(self, now: float) -> list[str]:
        """Forget the nodes not heard for `forget_after_s`; returns their ids."""
        gone = [n for n, e in self._nodes.items() if now - e.seen > self.forget_after_s]
        for node_id in gone:
            self.forget(node_id)
        return gone

    def rates(self) -> dict[str, float]:
        """Each node's assignments finished per second lately, from its heartbeats."""
        return {node_id: e.rate for node_id, e in self._nodes.items()}

    def __len__(self) -> int:
        return len(self._nodes)

    def assigned(self, node_id: str) -> None:
        """Count an assignment made since the last refresh."""
        self._assigned_since_refresh[node_id] += 1
        self._changed(node_id)

    def forget(self, node_id: str) -> None:
        """Stop offering a node until it announces itself again (its queue is gone, or
        it has been silent for long)."""
        self._nodes.pop(node_id, None)
        self._stats.pop(node_id, None)
        self._assigned_since_refresh.pop(node_id, None)
        if self._views is not None:
            self._views.pop(node_id, None)

    def streak(self, node_id: str, model: str) -> int:
        """The node's run of valid results for `model`, as of the last refresh."""
        stats = self._stats.get(node_id)
        return 0 if stats is None else int(stats.streaks.get(model, 0))

    def views(self) -> list[NodeView]:
        """Every recorded node as routing policy sees it, in the order nodes were first
        heard (the order the routing draws follow)."""
        if self._views is None:
            self._views = {
                node_id: self._view(node_id, entry)
                for node_id, entry in self._nodes.items()
                if entry.recorded
            }
        return list(self._views.values())

    def _changed(self, node_id: str) -> None:
        """Bring one node's view up to date: in place while it keeps its place among the
        views; a node offered anew has them all made again, in order, at the next
        `views`."""
        if self._views is None:
            return
        entry = self._nodes.get(node_id)
        if entry is None or not entry.recorded:
            self._views.pop(node_id, None)
        elif node_id in self._views:
            self._views[node_id] = self._view(node_id, entry)
        else:
            self._views = None

    def _view(self, node_id: str, entry: _Entry) -> NodeView:
        stats = self._stats.get(node_id, NodeStats(PRIOR_SCORE, 0, trust="probation"))
        beat = entry.beat
        return NodeView(
            node_id=node_id,
            hw_class=beat.hw_class,
            models=frozenset(beat.models),
            last_seen=entry.seen,
            score=stats.score,
            capacity=beat.capacity,
            inflight=stats.outstanding + self._assigned_since_refresh[node_id],
            draining=beat.status == "draining",
            trust=stats.trust,
            streaks=stats.streaks,
            offences=stats.offences,
        )
