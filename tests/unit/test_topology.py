"""Broker names for one namespace, resolved from brokers/topology.toml."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.adapters.topology import Topology
from cortensor.catalog import HW_CLASSES
from cortensor.errors import SetupIncomplete
from cortensor.paths import ROOT, checkout_path, resource
from cortensor.schemas import ANONYMOUS, Verdict

TOPOLOGY_FILE = resource("brokers", "topology.toml")

NS = "unit7"

NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True)
"""Valid principal names: node ids and owners."""


@pytest.fixture(scope="module")
def topo() -> Topology:
    return Topology(NS)


def every_name(t: Topology) -> set[str]:
    """Every queue, exchange, stream, consumer and subject name the namespace uses."""
    names = {e.name for e in t.exchanges}
    names |= {q.name for q in t.queues}
    names |= {s.name for s in t.streams}
    names |= {subject for s in t.streams for subject in s.subjects}
    names |= {t.guard_consumer.durable, t.guard_consumer.stream}
    names |= {
        t.jobs_exchange,
        t.router_queue,
        t.dead_letter_exchange,
        t.dead_letter_queue,
        t.results_stream,
        t.verdicts_stream,
        t.results_subject("job1", node_id="n1"),
        t.verdicts_subject("job1", owner="alice"),
        t.part_verdicts_subject("job1", "0", owner="alice"),
        t.heartbeat_subject("n1"),
        t.heartbeat_subject("*"),
    }
    spec = t.node_queue("n1", "cpu-fp32")
    names |= {spec.name, spec.exchange}
    return names


def test_from_a_checkout_the_topology_file_is_the_one_in_brokers() -> None:
    assert Path(__file__).resolve().parents[2] / "brokers" / "topology.toml" == TOPOLOGY_FILE
    assert TOPOLOGY_FILE.is_file()
    assert Path(__file__).resolve().parents[2] == ROOT


def test_a_missing_shipped_file_says_how_to_reinstall() -> None:
    with pytest.raises(SetupIncomplete, match="reinstall Cortensor"):
        resource("brokers", "no-such-file.toml")


def test_a_missing_checkout_file_says_how_to_install() -> None:
    with pytest.raises(SetupIncomplete, match="pip install -e"):
        checkout_path("no-such-file")


def test_a_topology_without_a_role_is_refused(tmp_path: Path) -> None:
    text = TOPOLOGY_FILE.read_text().replace('role = "dead-letter"', 'role = "other"')
    (tmp_path / "topology.toml").write_text(text)
    with pytest.raises(SetupIncomplete, match="role 'dead-letter'"):
        Topology(NS, tmp_path / "topology.toml")


def test_exchanges_include_jobs_dead_letters_and_one_per_hw_class(topo: Topology) -> None:
    exchanges = {e.name: e.type for e in topo.exchanges}
    assert exchanges[f"{NS}.submit"] == "topic"
    assert exchanges[f"{NS}.dlx"] == "fanout"
    assert exchanges[f"{NS}.park"] == "fanout"
    assert topo.hw_classes == HW_CLASSES
    for hw_class in HW_CLASSES:
        assert exchanges[f"{NS}.hw.{hw_class}"] == "direct"
        assert topo.hw_exchange(hw_class) == f"{NS}.hw.{hw_class}"
    assert len(exchanges) == len(topo.exchanges) == 3 + len(HW_CLASSES)


def test_shortcut_names_match_the_declared_ones(topo: Topology) -> None:
    exchanges = {e.name for e in topo.exchanges}
    queues = {q.name for q in topo.queues}
    assert {topo.jobs_exchange, topo.dead_letter_exchange} <= exchanges
    assert {topo.router_queue, topo.dead_letter_queue} <= queues
    assert {s.name for s in topo.streams} == {topo.results_stream, topo.verdicts_stream}


def test_router_queue_is_a_quorum_queue_that_dead_letters(topo: Topology) -> None:
    router = next(q for q in topo.queues if q.name == f"{NS}.router")
    assert router.exchange == topo.jobs_exchange
    assert router.routing_key == topo.jobs_binding == "job.*"
    assert router.arguments["x-queue-type"] == "quorum"
    assert router.arguments["x-dead-letter-exchange"] == f"{NS}.dlx"
    assert router.arguments["x-delivery-limit"] == 5


def test_dead_letter_queue_is_bound_to_the_dead_letter_exchange(topo: Topology) -> None:
    dead = next(q for q in topo.queues if q.name == topo.dead_letter_queue)
    assert dead.name == f"{NS}.dead"
    assert dead.exchange == topo.dead_letter_exchange
    assert dead.arguments["x-queue-type"] == "quorum"
    # A dead-letter queue must not dead-letter into itself.
    assert "x-dead-letter-exchange" not in dead.arguments


def test_the_parked_queue_keeps_what_nobody_can_end_for_a_day(topo: Topology) -> None:
    parked = next(q for q in topo.queues if q.name == topo.parked_queue)
    assert parked.name == f"{NS}.parked"
    assert parked.exchange == topo.parked_exchange != topo.dead_letter_exchange
    assert parked.arguments["x-queue-type"] == "quorum"
    assert parked.arguments["x-message-ttl"] == 24 * 3600 * 1000
    assert "x-dead-letter-exchange" not in parked.arguments
    assert topo.router_delivery_limit == 5


@pytest.mark.parametrize("hw_class", HW_CLASSES)
def test_node_queue_is_bound_to_its_class_exchange_with_its_id(
    topo: Topology, hw_class: str
) -> None:
    spec = topo.node_queue("host-node-2", hw_class)
    assert spec.name == f"{NS}.node.host-node-2"
    assert spec.exchange == f"{NS}.hw.{hw_class}" == topo.hw_exchange(hw_class)
    assert spec.routing_key == "host-node-2"
    assert spec.arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": f"{NS}.dlx",
        "x-delivery-limit": 5,
        # Bounded (docs/design.md, Overload): a full node queue nacks, never drops.
        "x-max-length": 1000,
        "x-max-length-bytes": 256 * 1024 * 1024,
        "x-overflow": "reject-publish",
    }


def test_jobs_are_published_under_their_owners_name(topo: Topology) -> None:
    assert topo.jobs_routing_key("alice") == "job.alice"
    assert topo.owner_of("job.alice") == "alice"


@given(NAMES)
def test_every_valid_owner_round_trips_through_its_routing_key(owner: str) -> None:
    topo = Topology(NS)
    assert topo.owner_of(topo.jobs_routing_key(owner)) == owner


@pytest.mark.parametrize(
    "key",
    [
        "",
        "job",
        "job.",
        "job.*",
        "job.#",
        "job.a.b",
        "job._alice",
        "job.-alice",
        "job.alice\n",
        "job.al ice",
        "job." + "a" * 65,
        "jobs.alice",
        "x.job.alice",
        "alice",
    ],
)
def test_a_routing_key_that_names_no_valid_owner_has_none(topo: Topology, key: str) -> None:
    assert topo.owner_of(key) is None


@given(st.text(max_size=80))
def test_an_owner_read_from_any_key_is_valid_and_is_the_one_it_names(key: str) -> None:
    topo = Topology(NS)
    owner = topo.owner_of(key)
    if owner is not None:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", owner)
        assert topo.jobs_routing_key(owner) == key


def test_subjects(topo: Topology) -> None:
    assert topo.results_subject("j1", node_id="n1") == f"{NS}.results.n1.j1"
    assert topo.results_subject("j1", node_id="*") == f"{NS}.results.*.j1"
    assert topo.verdicts_subject("j1", owner="alice") == f"{NS}.verdicts.alice.j1"
    assert topo.part_verdicts_subject("j1", "3", owner="alice") == (
        f"{NS}.verdicts.alice.j1.parts.3"
    )
    assert topo.part_verdicts_subject("j1", "*", owner="alice") == (
        f"{NS}.verdicts.alice.j1.parts.*"
    )
    assert topo.heartbeat_subject("n1") == f"{NS}.nodes.n1.heartbeat"
    assert topo.heartbeat_subject("*") == f"{NS}.nodes.*.heartbeat"


def test_streams_capture_their_subjects(topo: Topology) -> None:
    streams = {s.name: s for s in topo.streams}
    results, verdicts = streams[f"{NS}-results"], streams[f"{NS}-verdicts"]
    assert results.subjects == (f"{NS}.results.>",)
    assert verdicts.subjects == (f"{NS}.verdicts.>",)
    assert results.storage == verdicts.storage == "file"
    # Both carry user content: kept for the retention period (24 h unless set up otherwise).
    assert (results.holds_content, verdicts.holds_content) == (True, True)
    assert results.max_age_s == verdicts.max_age_s == 24 * 3600
    assert results.duplicate_window_s == 300
    # Clients read their verdicts by direct get (a permission names the subject); nobody
    # reads results that way.
    assert (verdicts.allow_direct, results.allow_direct) == (True, False)


def test_guard_consumer_pulls_from_the_results_stream(topo: Topology) -> None:
    consumer = topo.guard_consumer
    assert consumer.stream == topo.results_stream
    assert consumer.durable == f"{NS}-guard"
    assert consumer.ack_wait_s == 10
    assert consumer.max_ack_pending == 1000


def test_every_name_carries_the_namespace(topo: Topology) -> None:
    for name in every_name(topo):
        assert name.startswith((f"{NS}.", f"{NS}-")), name


def test_a_different_namespace_shares_no_names(topo: Topology) -> None:
    other = Topology("unit8")
    assert every_name(topo).isdisjoint(every_name(other))
    assert other.namespace == "unit8"


def test_a_custom_topology_file_is_read(tmp_path: Path) -> None:
    text = TOPOLOGY_FILE.read_text().replace(
        'hw_exchange = "{ns}.hw.{hw_class}"', 'hw_exchange = "{ns}.class.{hw_class}"'
    )
    custom = tmp_path / "topology.toml"
    custom.write_text(text)
    assert Topology(NS, custom).hw_exchange("cpu-int8") == f"{NS}.class.cpu-int8"


def test_a_verdict_goes_to_its_owners_subject(topo: Topology) -> None:
    job, parent = uuid.uuid4(), uuid.uuid4()
    whole = Verdict(job_id=job, owner="alice", status="verified")
    part = Verdict(job_id=job, owner="alice", status="verified", parent_id=parent, part=2)
    anonymous = Verdict(job_id=job, status="failed")
    assert topo.verdict_subject(whole) == f"{NS}.verdicts.alice.{job}"
    assert topo.verdict_subject(part) == f"{NS}.verdicts.alice.{parent}.parts.2"
    assert topo.verdict_subject(anonymous) == f"{NS}.verdicts.{ANONYMOUS}.{job}"


@given(NAMES, st.uuids().map(str))
def test_a_result_subject_names_its_node(node_id: str, job_id: str) -> None:
    topo = Topology(NS)
    assert topo.node_of_result(topo.results_subject(job_id, node_id=node_id)) == node_id


@pytest.mark.parametrize(
    "subject",
    [f"{NS}.results.j1", f"{NS}.results.a.b.j1", f"{NS}.verdicts.n1.j1", f"{NS}.results._n.j1"],
)
def test_a_subject_that_is_no_result_names_no_node(topo: Topology, subject: str) -> None:
    assert topo.node_of_result(subject) is None


def test_the_node_of_a_heartbeat_subject() -> None:
    topo = Topology("ns")
    assert topo.node_of_heartbeat(topo.heartbeat_subject("n-1")) == "n-1"
    for subject in (
        "ns.nodes..heartbeat",
        "ns.nodes.a.b.heartbeat",
        "other.nodes.n1.heartbeat",
        "ns.nodes.n1.heartbeats",
        topo.results_subject("j1", node_id="n1"),
        topo.heartbeat_subject("*"),
    ):
        assert topo.node_of_heartbeat(subject) is None, subject
