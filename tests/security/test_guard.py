"""Attacks a registered node can still make within its NATS permissions: publishing, on
its own result subject, results that lie about who answered, replay someone's signed
answer, or carry what the ledger cannot store. The guard drops each before the ledger
(the result is never stored), counts it in `refusals`, and charges no reputation event
to the node the result claims to be; the client's next jobs are verified.

Seen before: a node could answer as another node first, and the real answer was dropped
as a duplicate (the JetStream message id was the assignment id, which the attacker had
read from the victim's queue); 300 results with a NUL character in `error` stopped the
guard storing results (0 of the next 10 good jobs verified).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from nats.errors import MaxPayloadError
from nats.js.errors import NotFoundError

from cortensor.adapters import jetstream
from cortensor.catalog import EMBED_MODEL
from cortensor.protocol import signing
from cortensor.schemas import JobRequest
from tests.security.harness import FLEET_MARKS, SecuredFleet, nats_as, result_payload, signed

pytestmark = FLEET_MARKS


async def _publish_own(
    secured: SecuredFleet,
    messages: Sequence[tuple[uuid.UUID, bytes, dict[str, str]]],
) -> None:
    """Publish (job id, payload, headers) results on the attacker's own result subjects,
    each acked by the stream: what the guard then fetches is in the stream."""
    attacker = secured.attacker
    async with nats_as(attacker) as watched:
        js = watched.nc.jetstream()
        await asyncio.gather(
            *(
                js.publish(
                    secured.topology.results_subject(str(job_id), node_id=attacker.name),
                    payload,
                    headers={jetstream.MSG_ID_HEADER: uuid.uuid4().hex, **headers},
                )
                for job_id, payload, headers in messages
            )
        )
        assert not watched.errors, watched.errors


async def _forged_then_run(
    secured: SecuredFleet, forge: list[tuple[uuid.UUID, bytes, dict[str, str]]], job: JobRequest
) -> None:
    """Publish forged results for `job` before it runs, see them refused, then run the
    job: it is verified by the honest nodes, no forged result is stored (a replayed one
    stays stored once, as its honest node sent it), and no node is charged anything but
    agreement for it."""
    forged_ids = [_result_id(p) for _, p, _ in forge]
    query = "SELECT count(*) FROM results WHERE result_id = ANY($1::uuid[])"
    stored = await secured.fetchval(query, forged_ids)
    before = await secured.refusals("guard", secured.attacker.name)
    await _publish_own(secured, forge)
    await secured.refusals_reach("guard", secured.attacker.name, before + len(forge))
    verdict = await secured.run_job(job)
    assert verdict.status == "verified", verdict.reason
    assert set(verdict.agreeing) <= set(secured.nodes)
    assert await secured.fetchval(query, forged_ids) == stored
    for node in secured.nodes:
        assert "disagreed" not in await secured.events_of(node, job.job_id), node
    assert await secured.events_of(secured.attacker.name, job.job_id) == []


def _result_id(payload: bytes) -> str | None:
    """The result id a forged payload carries, if it parses at all."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    value = body.get("result_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


async def test_a_result_claiming_another_node_is_refused(secured: SecuredFleet) -> None:
    """Signed by the attacker on its own subject, but naming the victim as its node."""
    job = JobRequest(inputs=["who answered this?"], redundancy=3)
    victim = secured.nodes[0]
    payload = result_payload(node_id=victim, job_id=job.job_id)
    await _forged_then_run(secured, [(job.job_id, payload, signed(secured.attacker, payload))], job)
    await secured.good_job_verified()


async def test_unsigned_and_wrongly_signed_results_are_refused(secured: SecuredFleet) -> None:
    job = JobRequest(inputs=["a signature is not optional"], redundancy=3)
    me = secured.attacker.name
    unsigned = result_payload(node_id=me, job_id=job.job_id)
    other_bytes = result_payload(node_id=me, job_id=job.job_id)
    tampered = result_payload(node_id=me, job_id=job.job_id)
    garbage = result_payload(node_id=me, job_id=job.job_id)
    forge = [
        (job.job_id, unsigned, {}),
        # A real signature of the attacker's, over other bytes than these.
        (job.job_id, tampered, signed(secured.attacker, other_bytes)),
        (job.job_id, garbage, {signing.SIGNATURE_HEADER: "not base64 at all"}),
    ]
    await _forged_then_run(secured, forge, job)
    await secured.good_job_verified()


async def test_a_replayed_signed_result_is_refused(secured: SecuredFleet) -> None:
    """An honest node's real signed result (as the operator can read it from the
    stream) is replayed by the attacker: under the honest node's subject the server
    refuses it; under the attacker's own, for the same job or another, the signature is
    not the attacker's; and the attacker's own signature moved to another job's subject
    is refused too."""
    decided = await secured.good_job_verified()
    honest = decided.agreeing[0]
    subject = secured.topology.results_subject(str(decided.job_id), node_id=honest)
    nc = await jetstream.connect_as(secured.admin, name="security-operator")
    try:
        original = await nc.jetstream().get_last_msg(secured.topology.results_stream, subject)
    finally:
        await nc.drain()
    assert original.data is not None
    headers = {signing.SIGNATURE_HEADER: (original.headers or {})[signing.SIGNATURE_HEADER]}

    async with nats_as(secured.attacker) as watched:
        again = secured.topology.results_subject(str(uuid.uuid4()), node_id=honest)
        await watched.nc.publish(again, original.data, headers=headers)
        await watched.refused(again, what="a replay under the honest node's subject refused")

    job = JobRequest(inputs=["replays are refused"], redundancy=3)
    mine = result_payload(node_id=secured.attacker.name, job_id=uuid.uuid4())
    forge = [
        (decided.job_id, original.data, headers),
        (job.job_id, original.data, headers),
        # Signed by the attacker for one job, published on another job's subject.
        (job.job_id, mine, signed(secured.attacker, mine)),
    ]
    await _forged_then_run(secured, forge, job)
    assert "disagreed" not in await secured.events_of(honest, decided.job_id)
    await secured.good_job_verified()


async def test_a_result_for_someone_elses_assignment_is_refused(secured: SecuredFleet) -> None:
    """A genuinely signed result of the attacker's own, on its own subject, naming a
    real job and an assignment that is not the attacker's (another node's on that job,
    or one of another job): the ledger refuses it, and counts it."""
    first, second = await secured.good_job_verified(), await secured.good_job_verified()
    query = "SELECT assignment_id FROM assignments WHERE job_id = $1 LIMIT 1"
    forge = []
    for target, assignment in (
        (first.job_id, await secured.fetchval(query, first.job_id)),
        (second.job_id, await secured.fetchval(query, first.job_id)),
    ):
        payload = result_payload(
            node_id=secured.attacker.name, job_id=target, assignment_id=assignment
        )
        forge.append((target, payload, signed(secured.attacker, payload)))
    job = JobRequest(inputs=["not your assignment"], redundancy=3)
    await _forged_then_run(secured, forge, job)
    for verdict in (first, second):
        for node in verdict.agreeing:
            assert "disagreed" not in await secured.events_of(node, verdict.job_id)
    await secured.good_job_verified()


async def test_no_node_can_answer_first_under_a_peers_message_id(secured: SecuredFleet) -> None:
    """The attack seen: the attacker published first, under the message id the victim's
    result would carry (its assignment id), and the real result was dropped as a
    duplicate. Message ids are now derived from the signature, which only the signer
    can make: the attacker races each job with every id it could know (the job's, each
    assignment's as soon as the ledger has it), and every honest result is still stored,
    under an id derived from its own signature."""
    jobs = [JobRequest(inputs=[f"race {i} {uuid.uuid4().hex}"], redundancy=3) for i in range(5)]
    ids = [j.job_id for j in jobs]
    attacker = secured.attacker
    raced: set[str] = set()
    async with nats_as(attacker) as watched:
        js = watched.nc.jetstream()

        async def race(msg_id: str, job_id: uuid.UUID) -> None:
            payload = result_payload(node_id=attacker.name, job_id=job_id)
            await js.publish(
                secured.topology.results_subject(str(job_id), node_id=attacker.name),
                payload,
                headers={jetstream.MSG_ID_HEADER: msg_id, **signed(attacker, payload)},
            )
            raced.add(msg_id)

        await asyncio.gather(*(race(str(j), j) for j in ids))
        running = asyncio.ensure_future(asyncio.gather(*(secured.run_job(j) for j in jobs)))
        conn = await secured.ledger()
        try:
            while not running.done():
                rows = await conn.fetch(
                    "SELECT assignment_id, job_id FROM assignments WHERE job_id = ANY($1::uuid[])",
                    ids,
                )
                fresh = [(str(r["assignment_id"]), r["job_id"]) for r in rows]
                await asyncio.gather(*(race(a, j) for a, j in fresh if a not in raced))
                await asyncio.sleep(0.005)
        finally:
            await conn.close()
        verdicts = await running
    assert [v.status for v in verdicts] == ["verified"] * len(jobs)
    nc = await jetstream.connect_as(secured.admin, name="security-operator")
    try:
        js = nc.jetstream()
        for verdict in verdicts:
            assert await secured.stored_results(verdict.job_id) >= len(verdict.agreeing)
            for node in verdict.agreeing:
                subject = secured.topology.results_subject(str(verdict.job_id), node_id=node)
                stored = await js.get_last_msg(secured.topology.results_stream, subject)
                signature = signing.signature_of(stored.headers)
                assert signature is not None
                msg_id = (stored.headers or {})[jetstream.MSG_ID_HEADER]
                assert msg_id == signing.result_msg_id(signature)
                assert msg_id not in raced
    finally:
        await nc.drain()
    await secured.good_job_verified()


HOSTILE_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("NUL in error", {"error": "boom\x00"}),
    ("NUL in model", {"model": f"{EMBED_MODEL}\x00"}),
    ("NUL in build", {"build": "\x00"}),
    ("oversized error", {"error": "e" * 200_000}),
    ("too many vectors", {"embeddings": [[0.5]] * 100_000}),
    ("oversized vector", {"embeddings": [[0.5] * 100_000]}),
]
"""Result fields the ledger cannot store or the guard must not take, each in a result
that is otherwise well formed and genuinely signed by the attacker."""

HOSTILE_JSON: list[tuple[str, str]] = [
    ("NaN in a vector", '"embeddings": [[NaN, 0.5]]'),
    ("Infinity in a vector", '"embeddings": [[Infinity, 0.5]]'),
    ("-Infinity in elapsed", '"elapsed_ms": -Infinity'),
    ("lone surrogate in error", '"error": "\\ud800"'),
    ("NUL escape in error", '"error": "\\u0000"'),
]
"""Hostile values only raw JSON can carry (json.dumps refuses or escapes them),
spliced into a well-formed result."""


def _hostile(secured: SecuredFleet, job_id: uuid.UUID) -> list[bytes]:
    me = secured.attacker.name
    payloads = [result_payload(node_id=me, job_id=job_id, **f) for _, f in HOSTILE_FIELDS]
    for _, splice in HOSTILE_JSON:
        base = result_payload(node_id=me, job_id=job_id).decode()
        payloads.append(f"{base[:-1]}, {splice}}}".encode())
    payloads.append(b'{"job_id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    return payloads


async def test_hostile_fields_are_refused_and_the_guard_keeps_storing(
    secured: SecuredFleet,
) -> None:
    """NUL, NaN, infinities, lone surrogates, oversized fields, deep nesting: each in a
    result signed by the attacker, each refused, and the guard stores what follows."""
    job = JobRequest(inputs=["hostile fields change nothing"], redundancy=3)
    forge = [(job.job_id, p, signed(secured.attacker, p)) for p in _hostile(secured, job.job_id)]
    await _forged_then_run(secured, forge, job)
    await secured.good_job_verified()


async def test_a_flood_of_nul_results_does_not_stop_the_guard(secured: SecuredFleet) -> None:
    """The attack seen: 300 results with NUL in `error`, then 10 good jobs: all 10 are
    verified."""
    me = secured.attacker.name
    forge = []
    for _ in range(300):
        job_id = uuid.uuid4()
        payload = result_payload(node_id=me, job_id=job_id, error="NUL\x00here", embeddings=None)
        forge.append((job_id, payload, signed(secured.attacker, payload)))
    before = await secured.refusals("guard", me)
    await _publish_own(secured, forge)
    jobs = [
        JobRequest(inputs=[f"good job {i} {uuid.uuid4().hex}"], redundancy=3) for i in range(10)
    ]
    verdicts = await asyncio.gather(*(secured.run_job(j, timeout_s=60) for j in jobs))
    assert [v.status for v in verdicts] == ["verified"] * 10, [v.reason for v in verdicts]
    await secured.refusals_reach("guard", secured.attacker.name, before + len(forge))
    forged = [json.loads(p)["job_id"] for _, p, _ in forge]
    assert (
        await secured.fetchval(
            "SELECT count(*) FROM results WHERE job_id = ANY($1::uuid[])", forged
        )
        == 0
    )


async def test_an_oversized_message_never_reaches_the_stream(secured: SecuredFleet) -> None:
    """A result past the server's payload limit (which the server announces, and which
    nats-py checks before sending) never reaches the stream."""
    me = secured.attacker.name
    job_id = uuid.uuid4()
    async with nats_as(secured.attacker) as watched:
        limit = watched.nc.max_payload
        payload = result_payload(node_id=me, job_id=job_id, error="x" * (limit + 1))
        subject = secured.topology.results_subject(str(job_id), node_id=me)
        with pytest.raises(MaxPayloadError):
            await watched.nc.jetstream().publish(
                subject, payload, headers=signed(secured.attacker, payload)
            )
    nc = await jetstream.connect_as(secured.admin, name="security-operator")
    try:
        with pytest.raises(NotFoundError):
            await nc.jetstream().get_last_msg(secured.topology.results_stream, subject)
    finally:
        await nc.drain()
    await secured.good_job_verified()
