"""Prometheus metrics of the router, the guard and the nodes, and their `/metrics` endpoint.

Every metric is defined here, once, on prometheus_client's default registry, so that a
dashboard (ops/grafana-dashboard.json) and the autoscaling rules (docs/autoscaling.md)
have one list to read. Each process updates the ones it knows of:

- guard: verdicts it decided, their latency (job recorded -> verdict decided), the
  agreements, disagreements and timeouts they charged;
- router: what became of each job it took, the verdicts it wrote (rejected, failed),
  and the fleet as its registry sees it (nodes by trust, each node's work, work awaited
  per hardware class: the autoscaling signal);
- node: its assignments in hand and done (`node_collector`);
- gateway: the HTTP calls it answered, by route and status, and how long each took.

A process serves them with `serve_metrics` when `CORTENSOR_METRICS_PORT` is set; the
gateway mounts `metrics_text` on its own HTTP app.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of `metrics_text`."""

LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""From single-sentence embeddings (ms) to transcriptions of long audio (minutes)."""

VERDICTS = Counter(
    "cortensor_verdicts",
    "Verdicts decided, by task and status (guard: verified, inconclusive, failed at the"
    " deadline; router: rejected, failed for want of nodes). Parts of split jobs are not"
    " counted; the job they make up is.",
    ["task", "status"],
)
LATENCY = Histogram(
    "cortensor_job_latency_seconds",
    "Seconds from a job's record in the ledger to its verdict, for the jobs a guard"
    " decided on their results, by task and status.",
    ["task", "status"],
    buckets=LATENCY_BUCKETS_S,
)
REPUTATION = Counter(
    "cortensor_reputation_events",
    "Results the guard judged, by outcome: agreed, disagreed, timed_out.",
    ["kind"],
)
ROUTED = Counter(
    "cortensor_router_jobs",
    "Job messages the router took, by what became of them: routed, waiting (no node"
    " yet), rejected, dead-lettered, duplicate.",
    ["outcome"],
)
GATEWAY_CALLS = Counter(
    "cortensor_gateway_calls",
    "HTTP calls the gateway answered, by route template (never a job id) and status.",
    ["route", "status"],
)
GATEWAY_SECONDS = Histogram(
    "cortensor_gateway_call_seconds",
    "Seconds the gateway took to answer a call, the verdict's wait included, by route.",
    ["route"],
    buckets=LATENCY_BUCKETS_S,
)


class Decided(Protocol):
    """What the metrics read of a verdict (cortensor.schemas.Verdict)."""

    @property
    def task(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def part(self) -> int | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def agreeing(self) -> list[str]: ...
    @property
    def disagreeing(self) -> list[str]: ...
    @property
    def timed_out(self) -> list[str]: ...


def verdicts_decided(verdicts: Iterable[Decided], *, submitted_at: datetime | None = None) -> None:
    """Count newly decided verdicts and the reputation they charged; with `submitted_at`
    (when their job was recorded), observe their latency too."""
    for v in verdicts:
        REPUTATION.labels("agreed").inc(len(v.agreeing))
        REPUTATION.labels("disagreed").inc(len(v.disagreeing))
        REPUTATION.labels("timed_out").inc(len(v.timed_out))
        if v.part is not None:
            continue
        VERDICTS.labels(v.task, v.status).inc()
        if submitted_at is not None:
            seconds = (v.created_at - submitted_at).total_seconds()
            LATENCY.labels(v.task, v.status).observe(max(0.0, seconds))


def timeouts_charged(count: int) -> None:
    """Count replicas charged for missing their deadline outside a verdict (stragglers)."""
    if count:
        REPUTATION.labels("timed_out").inc(count)


def jobs_taken(outcomes: Sequence[str]) -> None:
    """Count what became of the job messages a router took."""
    for outcome, n in Tally(outcomes).items():
        ROUTED.labels(outcome).inc(n)


class FleetNode(Protocol):
    """What the fleet metrics read of one node (protocol.placement.NodeView)."""

    @property
    def node_id(self) -> str: ...
    @property
    def hw_class(self) -> str: ...
    @property
    def trust(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def inflight(self) -> int: ...


_NODE = ("node_id", "hw_class")
FLEET_METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "cortensor_fleet_nodes": (
        ("hw_class", "trust"),
        "Nodes the router hears, by hardware class and trust (probation, active, quarantined).",
    ),
    "cortensor_queue_depth": (
        ("hw_class",),
        "Assignments handed to a hardware class's nodes and not answered yet (waiting in"
        " their queues or running), as the router last read them from the ledger: the"
        " signal to scale a class's nodes on.",
    ),
    "cortensor_fleet_node_inflight": (_NODE, "Assignments a node runs, from its last heartbeat."),
    "cortensor_fleet_node_processed": (
        _NODE,
        "Assignments a node finished since it started, from its last heartbeat.",
    ),
    "cortensor_fleet_node_score": (_NODE, "A node's reputation score as routing sees it."),
    "cortensor_fleet_node_rate": (
        _NODE,
        "Assignments a node finished per second lately, from its heartbeats.",
    ),
}
"""The router's fleet gauges (FleetCollector), by name: their labels and help text."""


class FleetCollector(Collector):
    """The fleet as a router's registry last saw it, made into gauges only when scraped:
    a refresh (every second) just keeps the lists it was given, so that thousands of
    nodes cost the router nothing between scrapes."""

    def __init__(self) -> None:
        self._seen: tuple[Sequence[FleetNode], Mapping[str, tuple[int, int]], Mapping[str, float]]
        self._seen = ((), {}, {})

    def update(
        self,
        views: Sequence[FleetNode],
        running: Mapping[str, tuple[int, int]],
        rates: Mapping[str, float],
    ) -> None:
        """Keep the fleet's state (views, (inflight, processed) by node, rate by node);
        the caller hands over fresh collections and does not change them afterwards."""
        self._seen = (views, running, rates)

    def collect(self) -> Iterator[Metric]:
        """The gauges of the state kept last (a node no longer seen has none)."""
        views, running, rates = self._seen  # one read: a refresh may replace it meanwhile
        families = {
            name: GaugeMetricFamily(name, doc, labels=list(labels))
            for name, (labels, doc) in FLEET_METRICS.items()
        }
        by_class: Tally[tuple[str, str]] = Tally()
        depth: Tally[str] = Tally()
        for view in views:
            by_class[view.hw_class, view.trust] += 1
            depth[view.hw_class] += view.inflight
            inflight, processed = running.get(view.node_id, (0, 0))
            labels = [view.node_id, view.hw_class]
            families["cortensor_fleet_node_inflight"].add_metric(labels, inflight)
            families["cortensor_fleet_node_processed"].add_metric(labels, processed)
            families["cortensor_fleet_node_score"].add_metric(labels, view.score)
            families["cortensor_fleet_node_rate"].add_metric(labels, rates.get(view.node_id, 0.0))
        for (hw_class, trust), n in sorted(by_class.items()):
            families["cortensor_fleet_nodes"].add_metric([hw_class, trust], n)
        for hw_class, n in sorted(depth.items()):
            families["cortensor_queue_depth"].add_metric([hw_class], n)
        yield from families.values()


FLEET = FleetCollector()
REGISTRY.register(FLEET)


def fleet_seen(
    views: Sequence[FleetNode],
    running: Mapping[str, tuple[int, int]],
    rates: Mapping[str, float],
) -> None:
    """Keep a router's view of the fleet for its gauges: its node views (trust, score,
    assignments awaited), each node's (inflight, processed) from its last heartbeat, and
    its rate. Nodes no longer seen have no gauges."""
    FLEET.update(views, running, rates)


class NodeCollector(Collector):
    """A node's own gauges, read at each scrape from `counts` (inflight, processed)."""

    def __init__(self, node_id: str, hw_class: str, counts: Callable[[], tuple[int, int]]):
        self.node_id, self.hw_class, self.counts = node_id, hw_class, counts

    def collect(self) -> Iterator[Metric]:
        """The node's inflight gauge and processed counter."""
        inflight, processed = self.counts()
        labels = ["node_id", "hw_class"]
        values = [self.node_id, self.hw_class]
        running = GaugeMetricFamily(
            "cortensor_node_inflight", "Assignments this node is running.", labels=labels
        )
        running.add_metric(values, inflight)
        done = CounterMetricFamily(
            "cortensor_node_processed", "Assignments this node finished.", labels=labels
        )
        done.add_metric(values, processed)
        yield running
        yield done


def node_collector(
    node_id: str,
    hw_class: str,
    counts: Callable[[], tuple[int, int]],
    registry: CollectorRegistry = REGISTRY,
) -> NodeCollector:
    """Register a node's gauges (`counts` returns its inflight and processed counts)."""
    collector = NodeCollector(node_id, hw_class, counts)
    registry.register(collector)
    return collector


def gateway_answered(route: str, status: int, seconds: float) -> None:
    """Count one call the gateway answered."""
    GATEWAY_CALLS.labels(route=route, status=str(status)).inc()
    GATEWAY_SECONDS.labels(route=route).observe(seconds)


def metrics_text(registry: CollectorRegistry = REGISTRY) -> bytes:
    """Every metric in the text exposition format (Content-Type: CONTENT_TYPE), for an
    HTTP app that serves /metrics itself (the gateway)."""
    return generate_latest(registry)


def serve_metrics(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> int:
    """Serve /metrics over HTTP on a thread of this process; port 0 picks a free port.
    Returns the port it listens on. OSError when the port is taken."""
    server, _ = start_http_server(port, addr=addr, registry=registry)
    return int(server.server_port)
