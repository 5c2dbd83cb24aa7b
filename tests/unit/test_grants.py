"""What each kind of principal may do, as written for the servers: RabbitMQ's anchored
regular expressions match exactly the names a principal needs (never a neighbour whose
name shares a prefix), and NATS subjects name the principal's own id or owner."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.adapters.principals.grants import (
    KINDS,
    NOTHING,
    check_name,
    inbox_prefix,
    name_of,
    nats_permissions,
    rabbit_grant,
    user_name,
)
from cortensor.adapters.topology import Topology
from cortensor.errors import BadInput

T = Topology("ns-1")
names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z")


def matches(pattern: str, name: str) -> bool:
    """How RabbitMQ applies a permission: the pattern searched in the name."""
    return re.search(pattern, name) is not None


@given(me=names, other=names)
def test_a_node_reads_its_own_queue_only(me: str, other: str) -> None:
    grant = rabbit_grant(T, "node", me, hw_class="cpu-int8")
    assert grant is not None
    assert matches(grant.read, T.node_queue(me, "cpu-int8").name)
    assert matches(grant.read, T.node_queue(other, "cpu-int8").name) == (me == other)
    assert matches(grant.read, T.node_queue(me + "x", "cpu-int8").name) is False
    for exchange in [e.name for e in T.exchanges]:
        assert not matches(grant.write, exchange)
        assert not matches(grant.configure, exchange)


@given(me=names, other=names)
def test_a_client_writes_jobs_under_its_own_key_only(me: str, other: str) -> None:
    grant = rabbit_grant(T, "client", me)
    assert grant is not None
    assert grant.topic is not None
    exchange, write, read = grant.topic
    assert exchange == T.jobs_exchange
    assert matches(write, T.jobs_routing_key(me))
    assert matches(write, T.jobs_routing_key(other)) == (me == other)
    assert matches(grant.write, T.jobs_exchange)
    assert (grant.configure, grant.read, read) == (NOTHING, NOTHING, NOTHING)


def test_the_router_writes_to_the_class_exchanges_and_reads_its_queue() -> None:
    grant = rabbit_grant(T, "router", "router")
    assert grant is not None
    for hw in T.hw_classes:
        assert matches(grant.write, T.hw_exchange(hw))
    assert matches(grant.write, T.dead_letter_exchange)
    assert matches(grant.write, T.parked_exchange)
    assert not matches(grant.write, T.jobs_exchange)
    assert matches(grant.read, T.router_queue)
    # Its dead-letter reader ends the jobs there; what it parks only the admin reads.
    assert matches(grant.read, T.dead_letter_queue)
    assert not matches(grant.read, T.parked_queue)
    assert grant.configure == NOTHING


@given(me=names)
def test_only_the_router_reads_dead_letters_which_hold_user_content(me: str) -> None:
    for kind in ("node", "client", "gateway"):
        grant = rabbit_grant(T, kind, me, hw_class="cpu-int8")
        assert grant is not None
        for queue in (T.dead_letter_queue, T.parked_queue):
            assert not matches(grant.read, queue), (kind, queue)
        for exchange in (T.dead_letter_exchange, T.parked_exchange):
            assert not matches(grant.write, exchange), (kind, exchange)


@pytest.mark.parametrize("kind", ["guard", "reports", "owner", "admin"])
def test_kinds_without_a_rabbitmq_user(kind: str) -> None:
    assert rabbit_grant(T, kind, "x") is None  # type: ignore[arg-type]


@given(me=names)
def test_nats_subjects_name_the_principal(me: str) -> None:
    node = nats_permissions(T, "node", me)
    client = nats_permissions(T, "client", me)
    assert node is not None
    assert client is not None
    assert set(node.publish) == {T.results_subject(">", node_id=me), T.heartbeat_subject(me)}
    assert node.subscribe == (f"{inbox_prefix('ns-1', 'node', me)}.>",)
    assert client.publish == (
        f"$JS.API.DIRECT.GET.{T.verdicts_stream}.{T.verdicts_subject('>', owner=me)}",
    )
    assert T.verdicts_subject(">", owner=me) in client.subscribe


def test_only_guards_and_the_router_publish_verdicts() -> None:
    for kind in KINDS:
        permissions = nats_permissions(T, kind, "x")
        if permissions is None:
            continue
        publishes_verdicts = "ns-1.verdicts.>" in permissions.publish
        assert publishes_verdicts == (kind in ("guard", "router")), kind


@pytest.mark.parametrize("bad", ["", "-x", "a.b", "a b", "x" * 65, "a>", "*"])
def test_names_that_are_not_one_token_are_refused(bad: str) -> None:
    with pytest.raises(BadInput):
        check_name(bad)
    with pytest.raises(BadInput):
        user_name("ns-1", "node", bad)


def test_the_router_reads_how_far_the_guards_got_but_fetches_no_result() -> None:
    """It reads the guards' consumer's info and a result by sequence (for the time it
    was stored); it cannot fetch from the consumer, ack, or read another consumer."""
    perms = nats_permissions(T, "router", "router")
    assert perms is not None
    consumer = T.guard_consumer
    assert f"$JS.API.CONSUMER.INFO.{consumer.stream}.{consumer.durable}" in perms.publish
    assert f"$JS.API.STREAM.MSG.GET.{T.results_stream}" in perms.publish
    assert not any("MSG.NEXT" in p or p.startswith("$JS.ACK") for p in perms.publish)


@given(me=names, owner=names)
def test_a_gateway_writes_jobs_under_any_one_owners_key_and_reads_nothing(
    me: str, owner: str
) -> None:
    """It submits each caller's jobs under the caller's name: any one-word owner, never a
    key the router's binding would not take (`job.a.b`) or another exchange."""
    grant = rabbit_grant(T, "gateway", me)
    assert grant is not None
    assert grant.topic is not None
    exchange, write, read = grant.topic
    assert exchange == T.jobs_exchange
    assert matches(write, T.jobs_routing_key(owner))
    for key in (f"{T.jobs_routing_key(owner)}.x", "job.#", "job.*", "router", f"x{owner}"):
        assert not matches(write, key), key
    assert matches(grant.write, T.jobs_exchange)
    for exchange_name in (e.name for e in T.exchanges if e.name != T.jobs_exchange):
        assert not matches(grant.write, exchange_name), exchange_name
    assert (grant.configure, grant.read, read) == (NOTHING, NOTHING, NOTHING)


@given(me=names, owner=names)
def test_a_gateway_reads_every_owners_verdicts_and_nothing_else(me: str, owner: str) -> None:
    perms = nats_permissions(T, "gateway", me)
    assert perms is not None
    assert perms.publish == (f"$JS.API.DIRECT.GET.{T.verdicts_stream}.ns-1.verdicts.>",)
    assert set(perms.subscribe) == {"ns-1.verdicts.>", f"{inbox_prefix('ns-1', 'gateway', me)}.>"}
    assert T.verdicts_subject("x", owner=owner).startswith("ns-1.verdicts.")


def test_name_of_inverts_user_name() -> None:
    assert name_of("ns-1", "client", user_name("ns-1", "client", "alice")) == "alice"
    assert name_of("ns-1", "client", user_name("ns-1", "node", "alice")) is None
    assert name_of("ns-1", "client", user_name("ns-2", "client", "alice")) is None
    assert name_of("ns-1", "client", "ns-1.client.a.b") is None
