"""`cortensor top`: a live view of the fleet, as the operator can read it.

What it shows comes from three places, each read once a refresh:
- the ledger: every node seen lately with its trust and score (view node_leaderboard),
  the assignments it holds unanswered, the results it returned over the last window,
  and the jobs decided over that window by status;
- RabbitMQ: the messages waiting in the router's queue and in each node's queue
  (passive declares, summed per hardware class);
- NATS: the nodes' heartbeats (inflight, processed), where the principal may hear them.
  They are what a node says of itself: shown, never trusted for anything.

A source that cannot be read shows "-" and the view goes on. `render` is a pure
function of a `Snapshot`, so a frame can be tested, or printed once (`--once`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cortensor.adapters import amqp, jetstream
from cortensor.adapters.topology import Topology
from cortensor.errors import LedgerUnavailable, SetupIncomplete
from cortensor.schemas import NodeHeartbeat, utcnow
from cortensor.settings import Settings

log = structlog.get_logger(__name__)

WINDOW_S = 10.0
"""The window rates are measured over (results per node, jobs decided per status)."""
SEEN_S = 300.0
"""Nodes heard of within this long are listed."""
MAX_NODES = 50
"""Most nodes listed (best score first within each class)."""

_NODES = """
SELECT l.node_id, l.hw_class, l.trust, l.score, l.last_seen,
       coalesce(a.awaited, 0) AS awaited, coalesce(r.recent, 0) AS recent
FROM node_leaderboard l
LEFT JOIN (
    SELECT node_id, count(*) AS awaited FROM assignments
    WHERE status = 'assigned' GROUP BY node_id
) a USING (node_id)
LEFT JOIN (
    SELECT node_id, count(*) AS recent FROM results
    WHERE received_at > now() - make_interval(secs => %(window)s) GROUP BY node_id
) r USING (node_id)
WHERE l.last_seen > now() - make_interval(secs => %(seen)s)
ORDER BY l.hw_class, l.score DESC, l.node_id
LIMIT %(limit)s
"""

_JOBS = """
SELECT status, count(*) AS jobs FROM jobs
WHERE decided_at > now() - make_interval(secs => %(window)s)
  AND parent_id IS NULL AND NOT probe
GROUP BY status
"""

STATUS_STYLES = {
    "verified": "green",
    "rejected": "yellow",
    "failed": "red",
    "inconclusive": "magenta",
}
TRUST_STYLES = {"active": "green", "probation": "yellow", "quarantined": "red"}


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as the view shows it."""

    node_id: str
    hw_class: str
    trust: str
    score: float
    awaited: int
    """Assignments it holds that it has not answered (ledger)."""
    rate: float
    """Results it returned per second over the window (ledger)."""
    inflight: int | None = None
    """Assignments it says it runs (its last heartbeat; None: not heard)."""
    processed: int | None = None
    queued: int | None = None
    """Messages waiting in its queue (RabbitMQ; None: not read)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one frame shows."""

    taken_at: datetime
    namespace: str
    nodes: list[NodeRow] = field(default_factory=list)
    jobs_per_s: dict[str, float] = field(default_factory=dict)
    router_queue: int | None = None
    window_s: float = WINDOW_S
    problems: list[str] = field(default_factory=list)
    """Sources that could not be read this time, in a few words each."""

    def classes(self) -> dict[str, tuple[int, int | None, int]]:
        """Per hardware class: its nodes, the messages in their queues (None when no
        queue could be read) and the assignments they hold unanswered."""
        nodes: dict[str, int] = defaultdict(int)
        queued: dict[str, int | None] = {}
        awaited: dict[str, int] = defaultdict(int)
        for n in self.nodes:
            nodes[n.hw_class] += 1
            awaited[n.hw_class] += n.awaited
            if n.queued is not None:
                queued[n.hw_class] = (queued.get(n.hw_class) or 0) + n.queued
            else:
                queued.setdefault(n.hw_class, None)
        return {c: (nodes[c], queued[c], awaited[c]) for c in sorted(nodes)}


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def render(snapshot: Snapshot) -> RenderableType:
    """One frame of the view: jobs per second by status, queue depth per class, nodes."""
    when = snapshot.taken_at.astimezone().strftime("%H:%M:%S")
    head = Text.assemble(
        ("cortensor top", "bold"),
        f"  namespace {snapshot.namespace}  {when}  rates over {snapshot.window_s:g} s",
    )
    jobs = Table(title="Jobs decided per second", title_justify="left")
    statuses = sorted({*STATUS_STYLES, *snapshot.jobs_per_s})
    for status in statuses:
        jobs.add_column(status, justify="right", style=STATUS_STYLES.get(status))
    jobs.add_column("router queue", justify="right")
    jobs.add_row(
        *(f"{snapshot.jobs_per_s.get(s, 0.0):.1f}" for s in statuses),
        _opt(snapshot.router_queue),
    )
    classes = Table(title="Queue depth per hardware class", title_justify="left")
    for column in ("class", "nodes", "queued messages", "awaited assignments"):
        classes.add_column(column, justify="left" if column == "class" else "right")
    for hw_class, (count, queued, awaited) in snapshot.classes().items():
        classes.add_row(hw_class, str(count), _opt(queued), str(awaited))
    nodes = Table(title=f"Nodes ({len(snapshot.nodes)})", title_justify="left")
    for column in ("node", "class", "trust", "score", "inflight", "awaited", "queued", "rate/s"):
        nodes.add_column(
            column, justify="left" if column in ("node", "class", "trust") else "right"
        )
    for n in snapshot.nodes:
        nodes.add_row(
            n.node_id,
            n.hw_class,
            Text(n.trust, style=TRUST_STYLES.get(n.trust, "")),
            f"{n.score:.3f}",
            _opt(n.inflight),
            str(n.awaited),
            _opt(n.queued),
            f"{n.rate:.1f}",
        )
    parts: list[RenderableType] = [head, jobs, classes, nodes]
    if snapshot.problems:
        parts.append(Text("not read: " + "; ".join(snapshot.problems), style="dim"))
    return Group(*parts)


def read_ledger(
    settings: Settings,
    *,
    window_s: float = WINDOW_S,
    seen_s: float = SEEN_S,
    limit: int = MAX_NODES,
) -> tuple[list[NodeRow], dict[str, float]]:
    """The nodes seen within `seen_s` (ledger's view) and the jobs decided per second
    over `window_s`, by status."""
    params = {"window": window_s, "seen": seen_s, "limit": limit}
    try:
        with psycopg.connect(settings.asyncpg_dsn, row_factory=dict_row) as conn:
            rows = conn.execute(_NODES, params).fetchall()
            jobs = conn.execute(_JOBS, params).fetchall()
    except psycopg.errors.UndefinedTable as exc:
        raise SetupIncomplete(
            f"{exc.diag.message_primary}: the ledger lacks the report views;"
            " run `cortensor db upgrade`"
        ) from exc
    except psycopg.OperationalError as exc:
        raise LedgerUnavailable(f"cannot reach the ledger: {exc}") from exc
    nodes = [
        NodeRow(
            node_id=r["node_id"],
            hw_class=r["hw_class"],
            trust=r["trust"],
            score=float(r["score"]),
            awaited=int(r["awaited"]),
            rate=int(r["recent"]) / window_s,
        )
        for r in rows
    ]
    return nodes, {r["status"]: int(r["jobs"]) / window_s for r in jobs}


class Heartbeats:
    """The latest heartbeat of each node, heard on NATS (display only: not verified)."""

    def __init__(self) -> None:
        self.latest: dict[str, NodeHeartbeat] = {}

    async def on_message(self, msg: Any) -> None:
        """Keep a heartbeat; anything unreadable is ignored."""
        with contextlib.suppress(ValueError):
            beat = NodeHeartbeat.model_validate_json(msg.data)
            self.latest[beat.node_id] = beat


@contextlib.asynccontextmanager
async def listening(settings: Settings, beats: Heartbeats) -> AsyncIterator[str | None]:
    """Hear the namespace's heartbeats while inside; yields why not, or None."""
    try:
        nc = await jetstream.connect_as(settings, name="cortensor top")
    except Exception as exc:
        yield f"heartbeats ({type(exc).__name__})"
        return
    try:
        subject = Topology(settings.namespace).heartbeat_subject("*")
        await nc.subscribe(subject, cb=beats.on_message)
        await nc.flush()  # the server holds the subscription from here on
        yield None
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def queue_depths(connection: Any, names: Iterable[str]) -> dict[str, int | None]:
    """Messages waiting in each queue (passive declares; None for one not readable)."""
    depths: dict[str, int | None] = {}
    channel = await connection.channel()
    for name in names:
        try:
            if channel.is_closed:
                channel = await connection.channel()
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = int(queue.declaration_result.message_count or 0)
        except Exception:  # missing, or refused to this principal: the channel closes
            depths[name] = None
    with contextlib.suppress(Exception):
        await channel.close()
    return depths


async def snapshot(
    settings: Settings,
    *,
    beats: Heartbeats | None = None,
    broker: Any | None = None,
    window_s: float = WINDOW_S,
    seen_s: float = SEEN_S,
    limit: int = MAX_NODES,
) -> Snapshot:
    """One frame's data: the ledger always (it is the truth), the queues when `broker`
    (an aio-pika connection) is given, the heartbeats `beats` has heard."""
    nodes, jobs = await asyncio.to_thread(
        read_ledger, settings, window_s=window_s, seen_s=seen_s, limit=limit
    )
    topology = Topology(settings.namespace)
    problems: list[str] = []
    router_queue: int | None = None
    if broker is not None:
        names = {n.node_id: topology.node_queue(n.node_id, n.hw_class).name for n in nodes}
        depths = await queue_depths(broker, [topology.router_queue, *names.values()])
        router_queue = depths[topology.router_queue]
        nodes = [replace(n, queued=depths[names[n.node_id]]) for n in nodes]
    else:
        problems.append("queues (RabbitMQ)")
    if beats is not None:
        nodes = [_heard(n, beats.latest.get(n.node_id)) for n in nodes]
    return Snapshot(utcnow(), settings.namespace, nodes, jobs, router_queue, window_s, problems)


def _heard(node: NodeRow, beat: NodeHeartbeat | None) -> NodeRow:
    if beat is None:
        return node
    return replace(node, inflight=beat.inflight, processed=beat.processed)


async def run(
    settings: Settings,
    show: Any,
    *,
    once: bool = False,
    interval_s: float = 1.0,
    window_s: float = WINDOW_S,
    seen_s: float = SEEN_S,
    limit: int = MAX_NODES,
) -> None:
    """Read a snapshot every `interval_s` and hand its frame to `show` (a rich Live's
    update, or a console's print with `once`)."""
    beats = Heartbeats()
    problems: list[str] = []
    broker = None
    try:
        broker = await asyncio.wait_for(amqp.connect_as(settings), settings.connect_timeout_s)
    except Exception as exc:
        problems.append(f"queues ({type(exc).__name__})")
    try:
        async with listening(settings, beats) as deaf:
            if deaf:
                problems.append(deaf)
            elif once:
                # A heartbeat a second: one frame waits for the nodes to be heard.
                await asyncio.sleep(settings.heartbeat_interval_s * 1.5)
            while True:
                frame = await snapshot(
                    settings,
                    beats=beats,
                    broker=broker,
                    window_s=window_s,
                    seen_s=seen_s,
                    limit=limit,
                )
                seen = [p for p in frame.problems if not p.startswith("queues")]
                show(render(replace(frame, problems=[*problems, *seen])))
                if once:
                    return
                await asyncio.sleep(interval_s)
    finally:
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.close()
