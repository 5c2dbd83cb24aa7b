"""Attacks on the router: heartbeats that lie or replay, and jobs that carry what the
ledger cannot store. A heartbeat is refused and counted before it reaches the node
registry (the node it names keeps its place); a hostile job is rejected with a reason
its owner can read; the client's next job is verified.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cortensor.catalog import EMBED_MODEL
from cortensor.client import Client
from cortensor.schemas import MAX_JOB_BYTES
from tests.security.harness import FLEET_MARKS, HW_CLASS, SecuredFleet, nats_as, signed

pytestmark = FLEET_MARKS


def _heartbeat(node_id: str, **fields: Any) -> bytes:
    """A well-formed heartbeat as JSON, any field overridable."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "schema_version": 1,
        "created_at": now.isoformat(),
        "node_id": node_id,
        "hw_class": HW_CLASS,
        "precision": "int8",
        "tasks": ["embed"],
        "models": [EMBED_MODEL],
        "capacity": 4,
        "inflight": 0,
        "processed": 0,
        "status": "up",
        "started_at": now.isoformat(),
        **fields,
    }
    return json.dumps(body).encode()


async def test_lying_and_replayed_heartbeats_are_refused(secured: SecuredFleet) -> None:
    """On its own heartbeat subject the attacker sends: an unsigned heartbeat, one that
    says it is the victim and is draining (which would take the victim off the routing
    table), an old one replayed, one from the future, and ones the registry cannot
    store. Each is refused and counted; the victim stays up and keeps its jobs."""
    me, victim = secured.attacker.name, secured.nodes[0]
    long_ago = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    ahead = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    hostile = [
        _heartbeat(victim, status="draining"),
        _heartbeat(me, created_at=long_ago),
        _heartbeat(me, created_at=ahead),
        _heartbeat(me, models=[f"{EMBED_MODEL}\x00"]),
        _heartbeat(me, models=[f"model-{i}" for i in range(50_000)]),
        _heartbeat(me)[:-1] + b', "capacity": NaN}',
    ]
    before = await secured.refusals("router", me)
    subject = secured.topology.heartbeat_subject(me)
    async with nats_as(secured.attacker) as watched:
        await watched.nc.publish(subject, _heartbeat(me))  # unsigned
        for payload in hostile:
            await watched.nc.publish(subject, payload, headers=signed(secured.attacker, payload))
        await watched.nc.flush()
        assert not watched.errors, watched.errors
    await secured.refusals_reach("router", me, before + 1 + len(hostile))
    status = await secured.fetchval("SELECT status FROM nodes WHERE node_id = $1", victim)
    assert status == "up"
    assert not await secured.fetchval("SELECT count(*) FROM nodes WHERE node_id = $1", me)
    await secured.good_job_verified()


def _job(**fields: Any) -> tuple[uuid.UUID, bytes]:
    job_id = uuid.uuid4()
    body = {"job_id": str(job_id), "schema_version": 1, "inputs": ["fine"], **fields}
    return job_id, json.dumps(body).encode()


def _raw(inputs: str, extra: str = "") -> tuple[uuid.UUID, bytes]:
    """A job whose inputs (and any extra fields) are raw JSON, for what only raw JSON
    can carry: lone surrogates, NaN, infinities."""
    job_id = uuid.uuid4()
    body = f'{{"job_id": "{job_id}", "schema_version": 1, "inputs": {inputs}{extra}}}'
    return job_id, body.encode()


async def test_hostile_jobs_are_rejected_with_a_reason(secured: SecuredFleet) -> None:
    """NUL, lone surrogates, NaN and infinities, an oversized job: each is rejected with
    a verdict its owner reads, and the next good job is verified."""
    hostile = [
        ("NUL in a text", *_job(inputs=["fine\x00"])),
        ("NUL in the model", *_job(model=f"{EMBED_MODEL}\x00")),
        ("lone surrogate", *_raw('["fine \\ud800"]')),
        ("NUL escape", *_raw('["fine \\u0000"]')),
        ("NaN deadline", *_raw('["fine"]', ', "deadline_s": NaN')),
        ("infinite deadline", *_raw('["fine"]', ', "deadline_s": Infinity')),
        ("oversized", *_job(inputs=["y" * 8000] * (MAX_JOB_BYTES // 8000 + 2))),
    ]
    async with Client(secured.client.settings) as client:
        for _, job_id, body in hostile:
            await client.publish_raw(body, message_id=str(job_id))
        for name, job_id, _ in hostile:
            verdict = await client.wait(job_id, timeout_s=30)
            assert verdict.status == "rejected", name
            assert verdict.reason, name
            assert "\x00" not in verdict.reason, name
    await secured.good_job_verified()
