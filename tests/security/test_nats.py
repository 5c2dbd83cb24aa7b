"""Attacks on NATS with a node's or a client's own credentials: each publish or
subscription outside the principal's permissions is answered by the server with a
permissions violation (nats-py's error callback), a denied subscription receives
nothing while jobs run, and the client's next job is verified.

Seen before the fleet ran secured: a verdict forged before its job ran, published with
the guard's message id, was what `cortensor result` returned afterwards (the guard's
own verdict was dropped as a duplicate); a plain subscription to `results.>` saw every
replica's answer as it was published; anyone could read every user's verdicts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from cortensor.adapters import jetstream
from cortensor.client import Client
from cortensor.schemas import JobRequest, Verdict
from tests.security.harness import FLEET_MARKS, SecuredFleet, Watched, nats_as

pytestmark = FLEET_MARKS


@dataclass
class Tap:
    """What a subscription received."""

    received: list[Msg] = field(default_factory=list)


async def _subscribe_denied(watched: Watched, subject: str) -> Tap:
    """Subscribe to `subject` and wait for the server to deny it."""
    tap = Tap()

    async def keep(msg: Msg) -> None:
        tap.received.append(msg)

    await watched.nc.subscribe(subject, cb=keep)
    await watched.refused(subject, what=f"the subscription to {subject} denied")
    return tap


async def _heard_nothing(watched: Watched, taps: list[Tap]) -> None:
    """After a job ran to its verdict (its results and its verdict were published before
    the client had it), a round trip to the server flushes anything still on its way to
    this connection: a denied subscription has received nothing."""
    await watched.nc.flush()
    assert all(not t.received for t in taps), [m.subject for t in taps for m in t.received]


@asynccontextmanager
async def _operator(secured: SecuredFleet) -> AsyncIterator[JetStreamContext]:
    """JetStream as the operator sees it (the admin credential)."""
    nc = await jetstream.connect_as(secured.admin, name="security-operator")
    try:
        yield nc.jetstream()
    finally:
        await nc.drain()


async def test_no_login_no_connection(secured: SecuredFleet) -> None:
    """NATS asks who connects: no user, or a wrong password, is refused."""
    url = urlsplit(secured.client.settings.nats_url)
    host = f"{url.hostname}:{url.port}"
    for attempt in (f"{url.scheme}://{host}", f"{url.scheme}://{url.username}:wrong@{host}"):
        nc = NATS()
        try:
            with pytest.raises(NatsError, match=r"(?i)authorization"):
                await nc.connect(attempt, allow_reconnect=False, connect_timeout=15)
        finally:
            await nc.close()  # a refused connect leaves its socket open otherwise
    await secured.good_job_verified()


async def test_verdict_forged_before_the_job_ran_is_refused(secured: SecuredFleet) -> None:
    """The attack seen: a verdict forged for a job not yet run, with the guard's message
    id. Neither a node nor another client may publish a verdict; the job's verdict is
    then the guard's, both as the client waits and when it asks again."""
    job = JobRequest(inputs=["the forged verdict must lose"], redundancy=3)
    subject = secured.topology.verdicts_subject(str(job.job_id), owner=secured.client.name)
    forged = Verdict(
        job_id=job.job_id,
        owner=secured.client.name,
        status="verified",
        embeddings=[[1.0] * 384],
        replicas=3,
        agreeing=["forger-1", "forger-2"],
    )
    headers = {jetstream.MSG_ID_HEADER: f"verdict-{job.job_id}"}
    for forger in (secured.attacker, secured.other_client):
        async with nats_as(forger) as watched:
            await watched.nc.publish(subject, forged.model_dump_json().encode(), headers=headers)
            await watched.refused(subject, what=f"{forger.name}'s forged verdict refused")
    verdict = await secured.run_job(job)
    assert verdict.status == "verified", verdict.reason
    assert set(verdict.agreeing) <= set(secured.nodes)
    assert verdict.embeddings != forged.embeddings
    async with Client(secured.client.settings) as client:
        again = await client.result(job.job_id)
    assert again is not None
    assert again.canonical_result_id == verdict.canonical_result_id
    assert again.agreeing == verdict.agreeing
    await secured.good_job_verified()


async def test_nobody_else_publishes_verdicts(secured: SecuredFleet) -> None:
    """A client cannot publish even on its own verdict subjects, nor a node on any: no
    part verdict, and no receipt saying that a job the network never saw was recorded."""
    job_id = str(uuid.uuid4())
    for forger, owner in (
        (secured.client, secured.client.name),
        (secured.attacker, secured.other_client.name),
    ):
        async with nats_as(forger) as watched:
            for what, subject in (
                ("part verdict", secured.topology.part_verdicts_subject(job_id, "0", owner=owner)),
                ("receipt", secured.topology.receipt_subject(job_id, owner=owner)),
            ):
                await watched.nc.publish(subject, b"{}")
                await watched.refused(subject, what=f"{forger.name}'s {what} refused")
    await secured.good_job_verified()


async def test_nobody_but_the_guard_reads_results(secured: SecuredFleet) -> None:
    """The attack seen: a plain subscription to `results.>` saw every replica's answer.
    Neither a node nor a client may subscribe to results, nor take them from the
    guard's consumer or read them through the JetStream API; while jobs run, the
    denied subscriptions receive nothing."""
    ns, stream = secured.admin.namespace, secured.topology.results_stream
    durable = secured.topology.guard_consumer.durable
    for spy in (secured.attacker, secured.other_client):
        async with nats_as(spy) as watched:
            taps = [
                await _subscribe_denied(watched, f"{ns}.results.>"),
                await _subscribe_denied(watched, f"{ns}.results.{secured.nodes[0]}.*"),
                await _subscribe_denied(watched, ">"),
            ]
            for api in (
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
                f"$JS.API.STREAM.MSG.GET.{stream}",
                f"$JS.API.CONSUMER.CREATE.{stream}",
                f"$JS.API.DIRECT.GET.{stream}",
            ):
                with pytest.raises(NatsError):
                    await watched.nc.request(api, b'{"batch": 1}', timeout=2)
                await watched.refused(api, what=f"{spy.name}: {api} refused")
            await secured.good_job_verified()
            await _heard_nothing(watched, taps)


async def test_nobody_else_acks_or_tampers_with_the_streams(secured: SecuredFleet) -> None:
    """Acking a result for the guard (it would never be stored), deleting or purging a
    stream, deleting the guard's consumer: refused to nodes and clients, and the streams
    and the consumer are still there."""
    topology = secured.topology
    results, verdicts = topology.results_stream, topology.verdicts_stream
    durable = topology.guard_consumer.durable
    acts = [
        f"$JS.ACK.{results}.{durable}.1.1.1.0.0",
        f"$JS.API.STREAM.PURGE.{results}",
        f"$JS.API.STREAM.DELETE.{results}",
        f"$JS.API.STREAM.PURGE.{verdicts}",
        f"$JS.API.STREAM.DELETE.{verdicts}",
        f"$JS.API.STREAM.MSG.DELETE.{verdicts}",
        f"$JS.API.STREAM.UPDATE.{results}",
        f"$JS.API.CONSUMER.DELETE.{results}.{durable}",
    ]
    for vandal in (secured.attacker, secured.other_client):
        async with nats_as(vandal) as watched:
            for subject in acts:
                await watched.nc.publish(subject, b"{}")
                await watched.refused(subject, what=f"{vandal.name}: {subject}")
    async with _operator(secured) as js:
        for stream in (results, verdicts):
            assert (await js.stream_info(stream)).config.name == stream
        assert (await js.consumer_info(results, durable)).name == durable
    await secured.good_job_verified()


async def test_a_client_reads_only_its_own_verdicts(secured: SecuredFleet) -> None:
    """The attack seen: anyone could read every user's verdicts. Mallory can neither
    subscribe to Alice's verdicts, fetch one (direct get in both forms, stream get), nor
    make a consumer that delivers them, while her own verdicts reach her."""
    ns, stream = secured.admin.namespace, secured.topology.verdicts_stream
    alice = secured.client.name
    async with nats_as(secured.other_client) as watched:
        taps = [
            await _subscribe_denied(watched, f"{ns}.verdicts.{alice}.>"),
            await _subscribe_denied(watched, f"{ns}.verdicts.>"),
            await _subscribe_denied(watched, f"_I.{ns}.client.{alice}.>"),
        ]
        verdict = await secured.good_job_verified()
        await _heard_nothing(watched, taps)
        subject = secured.topology.verdicts_subject(str(verdict.job_id), owner=alice)
        js = watched.nc.jetstream()
        with pytest.raises((NatsError, NotFoundError)):
            await js.get_last_msg(stream, subject, direct=True)
        await watched.refused(f"$JS.API.DIRECT.GET.{stream}.{subject}", what="direct get")
        with pytest.raises(NatsError):
            await js.get_last_msg(stream, subject)
        await watched.refused(f"$JS.API.STREAM.MSG.GET.{stream}", what="stream msg get")
        # The direct get's other form names the subject in the body, not in the API
        # subject that the permission can see: it must be refused whole.
        body = json.dumps({"last_by_subj": subject}).encode()
        with pytest.raises(NatsError):
            await watched.nc.request(f"$JS.API.DIRECT.GET.{stream}", body, timeout=2)
        await watched.refused(f"$JS.API.DIRECT.GET.{stream}", what="direct get by body")
        # A consumer of her own on the verdicts stream, filtered to Alice's subjects.
        create = f"$JS.API.CONSUMER.CREATE.{stream}.spy.{ns}.verdicts.{alice}.>"
        with pytest.raises(NatsError):
            await watched.nc.request(create, b"{}", timeout=2)
        await watched.refused(create, what="a consumer on the verdicts stream")
    async with Client(secured.other_client.settings) as mallory:
        own = await mallory.run(JobRequest(inputs=["mallory's own job"], redundancy=3))
        assert own.status == "verified"
        assert own.owner == secured.other_client.name
        assert await mallory.result(own.job_id) is not None
    await secured.good_job_verified()


async def test_a_node_publishes_only_under_its_own_id(secured: SecuredFleet) -> None:
    """A result or a heartbeat under another node's id, from a node or a client, is
    refused by the server and never reaches the results stream; nor can either hear the
    nodes' heartbeats."""
    victim = secured.nodes[0]
    job_id = uuid.uuid4()
    result = secured.topology.results_subject(str(job_id), node_id=victim)
    heartbeat = secured.topology.heartbeat_subject(victim)
    payload = json.dumps({"node_id": victim, "job_id": str(job_id)}).encode()
    for impostor in (secured.attacker, secured.other_client):
        async with nats_as(impostor) as watched:
            await watched.nc.publish(result, payload, headers={jetstream.MSG_ID_HEADER: "x"})
            await watched.refused(result, what=f"{impostor.name}: a result as the victim")
            await watched.nc.publish(heartbeat, payload)
            await watched.refused(heartbeat, what=f"{impostor.name}: a heartbeat as the victim")
            await _subscribe_denied(watched, secured.topology.heartbeat_subject("*"))
    async with _operator(secured) as js:
        with pytest.raises(NotFoundError):
            await js.get_last_msg(secured.topology.results_stream, result)
    await secured.good_job_verified()


async def test_a_node_cannot_read_others_replies(secured: SecuredFleet) -> None:
    """Replies (JetStream acks, direct gets) go to each principal's own inbox: a node
    cannot subscribe to another's, nor to the default inbox prefix."""
    ns = secured.admin.namespace
    async with nats_as(secured.attacker) as watched:
        taps = [
            await _subscribe_denied(watched, f"_I.{ns}.client.{secured.client.name}.>"),
            await _subscribe_denied(watched, f"_I.{ns}.node.{secured.nodes[0]}.>"),
            await _subscribe_denied(watched, "_INBOX.>"),
        ]
        await secured.good_job_verified()
        await _heard_nothing(watched, taps)


async def test_every_credential_has_its_own_inbox(secured: SecuredFleet) -> None:
    """Each principal's replies come to an inbox prefix of its own, which the others'
    permissions exclude (test_a_node_cannot_read_others_replies)."""
    holders = [secured.attacker, secured.client, secured.other_client]
    prefixes = [p.settings.nats_inbox_prefix for p in holders]
    assert len(set(prefixes)) == len(prefixes), prefixes
    assert "_INBOX" not in prefixes
    await secured.good_job_verified()
