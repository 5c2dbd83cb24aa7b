"""/metrics of the router and the guard, scraped over HTTP while jobs run through them
(on the twin brokers and the real ledger, as in test_services_on_twins)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortensor.metrics import serve_metrics
from cortensor.schemas import JobRequest
from cortensor.settings import Settings
from tests.conftest import eventually
from tests.contract.test_services_on_twins import MODEL, Network, node_ids, twin_network

pytestmark = [pytest.mark.postgres]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def metrics_url() -> str:
    """The /metrics of this process, served on a free port."""
    port = serve_metrics(0, addr="127.0.0.1")
    return f"http://127.0.0.1:{port}/metrics"


@pytest.fixture
async def net(ledger_settings: Settings) -> AsyncIterator[Network]:
    """A router and a guard on twin brokers, as test_services_on_twins' `net`."""
    async with twin_network(ledger_settings) as (network, _):
        yield network


async def scrape(url: str) -> Samples:
    """Every sample the endpoint serves, by name and labels."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counters_move_as_jobs_are_routed_rejected_and_verified(
    net: Network, metrics_url: str
) -> None:
    before = await scrape(metrics_url)
    nodes = node_ids("metrics", 3)
    for node in nodes:
        await net.join(node)
    job = JobRequest(inputs=["counted"], redundancy=3, model=MODEL)
    net.submit(job.model_dump_json().encode(), str(job.job_id))
    sent = await net.assignments_of(job.job_id, 3)

    async def awaited() -> bool:
        samples = await scrape(metrics_url)
        return value(samples, "cortensor_queue_depth", hw_class="cpu-int8") >= 3

    await eventually(awaited, what="the class's work awaited, as the router reads it")
    vector = [1.0] + [0.0] * 383
    for a in sent:
        await net.answer(a, vector, msg_id=str(a.assignment_id))
    [verdict] = await eventually(lambda: net.verdicts(job.job_id), what="a verdict")
    assert verdict.status == "verified"
    bad_id = uuid.uuid4()
    net.submit(json.dumps({"job_id": str(bad_id), "task": "juggle"}).encode(), str(bad_id))
    await eventually(lambda: net.verdicts(bad_id), what="the bad job rejected")
    after = await scrape(metrics_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("cortensor_verdicts_total", task="embed", status="verified") == 1
    assert moved("cortensor_verdicts_total", task="embed", status="rejected") == 1
    assert moved("cortensor_router_jobs_total", outcome="routed") == 1
    assert moved("cortensor_router_jobs_total", outcome="rejected") == 1
    assert moved("cortensor_reputation_events_total", kind="agreed") == 3
    assert moved("cortensor_reputation_events_total", kind="disagreed") == 0
    latency = "cortensor_job_latency_seconds_count"
    assert moved(latency, task="embed", status="verified") == 1
    assert value(after, "cortensor_job_latency_seconds_sum", task="embed", status="verified") > 0
    assert value(after, "cortensor_fleet_nodes", hw_class="cpu-int8", trust="active") >= 3
    for node in nodes:
        labels = {"node_id": node, "hw_class": "cpu-int8"}
        assert ("cortensor_fleet_node_inflight", tuple(sorted(labels.items()))) in after
        assert value(after, "cortensor_fleet_node_score", **labels) > 0
