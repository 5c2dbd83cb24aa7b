"""cortensor.metrics: what each hook counts, the node's collector, and the dashboard's
queries naming only metrics that exist."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cortensor import metrics
from cortensor.metrics import REGISTRY
from cortensor.paths import ROOT


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class FakeVerdict:
    task: str = "embed"
    status: str = "verified"
    part: int | None = None
    created_at: datetime = field(default_factory=lambda: datetime(2026, 1, 1, 12, tzinfo=UTC))
    agreeing: list[str] = field(default_factory=list)
    disagreeing: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)


@dataclass
class FakeView:
    node_id: str
    hw_class: str
    trust: str
    score: float
    inflight: int


def test_a_decided_job_counts_once_with_its_latency_and_its_parts_count_reputation_only() -> None:
    keys = {
        "total": ("cortensor_verdicts_total", "task=classify,status=verified"),
        "count": ("cortensor_job_latency_seconds_count", "task=classify,status=verified"),
        "sum": ("cortensor_job_latency_seconds_sum", "task=classify,status=verified"),
        "agreed": ("cortensor_reputation_events_total", "kind=agreed"),
        "disagreed": ("cortensor_reputation_events_total", "kind=disagreed"),
    }

    def read(key: str) -> float:
        name, labels = keys[key]
        return sample(name, **dict(pair.split("=") for pair in labels.split(",")))

    before = {key: read(key) for key in keys}
    job = FakeVerdict(task="classify", agreeing=["a", "b"], disagreeing=["c"])
    part = FakeVerdict(task="classify", part=1, agreeing=["d"])
    metrics.verdicts_decided([job, part], submitted_at=job.created_at - timedelta(seconds=1.5))

    moved = {key: read(key) - before[key] for key in keys}
    assert moved == {"total": 1, "count": 1, "sum": 1.5, "agreed": 3, "disagreed": 1}


def test_the_fleet_gauges_follow_the_registry_and_forget_nodes_gone() -> None:
    views = [
        FakeView("n-1", "cpu-int8", "active", 0.9, 5),
        FakeView("n-2", "cpu-int8", "quarantined", 0.1, 2),
        FakeView("n-3", "cuda-fp16", "active", 0.7, 0),
    ]
    metrics.fleet_seen(views, {"n-1": (3, 120)}, {"n-1": 4.5})
    assert sample("cortensor_queue_depth", hw_class="cpu-int8") == 7
    assert sample("cortensor_queue_depth", hw_class="cuda-fp16") == 0
    assert sample("cortensor_fleet_nodes", hw_class="cpu-int8", trust="quarantined") == 1
    n1 = {"node_id": "n-1", "hw_class": "cpu-int8"}
    assert sample("cortensor_fleet_node_inflight", **n1) == 3
    assert sample("cortensor_fleet_node_processed", **n1) == 120
    assert sample("cortensor_fleet_node_rate", **n1) == 4.5
    metrics.fleet_seen(views[2:], {}, {})
    assert REGISTRY.get_sample_value("cortensor_fleet_node_score", n1) is None
    assert REGISTRY.get_sample_value("cortensor_queue_depth", {"hw_class": "cpu-int8"}) is None


def test_router_outcomes_and_stragglers_are_counted() -> None:
    routed = sample("cortensor_router_jobs_total", outcome="routed")
    waiting = sample("cortensor_router_jobs_total", outcome="waiting")
    late = sample("cortensor_reputation_events_total", kind="timed_out")
    metrics.jobs_taken(["routed", "routed", "waiting"])
    metrics.timeouts_charged(4)
    metrics.timeouts_charged(0)
    assert sample("cortensor_router_jobs_total", outcome="routed") - routed == 2
    assert sample("cortensor_router_jobs_total", outcome="waiting") - waiting == 1
    assert sample("cortensor_reputation_events_total", kind="timed_out") - late == 4


def test_a_nodes_collector_reads_its_counts_at_each_scrape() -> None:
    registry = CollectorRegistry()
    counts = [(1, 10)]
    metrics.node_collector("n-9", "cpu-fp32", lambda: counts[-1], registry=registry)
    counts.append((0, 11))
    text = metrics.metrics_text(registry).decode()
    found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert found == {"cortensor_node_inflight": 0, "cortensor_node_processed_total": 11}


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = {m for e in exprs for m in re.findall(r"cortensor_[a-z_]+", e)}
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    known = {f.name + end for f in REGISTRY.collect() for end in suffixes}
    known |= {"cortensor_node_inflight", "cortensor_node_processed_total"}  # per node
    assert named
    assert named <= known, named - known
