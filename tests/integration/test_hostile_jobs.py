"""Jobs no ledger could store, published raw to the real jobs exchange beside good ones,
and a router in this process on the real RabbitMQ and ledger: each hostile job gets a
rejected verdict that names its field (or is dead-lettered when it names no job id),
and the good jobs published with them are all recorded."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

from cortensor.adapters.live import router_ports
from cortensor.client import Client
from cortensor.schemas import MAX_JOB_BYTES, SCHEMA_VERSION, JobRequest
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from tests.conftest import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.nats]


def raw_job(**fields: Any) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": str(uuid.uuid4()),
        "task": "embed",
        "inputs": ["fine"],
        **fields,
    }


def encoded(raw: dict[str, Any]) -> bytes:
    """JSON as a client in another language may write it: NUL and lone surrogates as
    escapes, NaN as a literal."""
    return json.dumps(raw).encode()


HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    "nul-in-text": (raw_job(inputs=["ok", "bad\x00"]), "inputs.1: holds a NUL character"),
    "nul-in-task": (raw_job(task="embed\x00"), "task: "),
    "lone-surrogate": (raw_job(inputs=["\ud800"]), "inputs.0: "),
    "nan-deadline": (raw_job(deadline_s=float("nan")), "deadline_s: "),
    "nul-in-field-name": (raw_job(**{"colour\x00": 1}), "colour\\u0000: "),
}
"""Each hostile job, and the start of its rejection's reason."""


@pytest.fixture
async def router_running(broker_settings: Settings) -> AsyncIterator[Router]:
    stop = asyncio.Event()
    async with router_ports(broker_settings) as ports:
        router = Router(broker_settings, ports, seed=3)
        task = asyncio.create_task(router.run(stop))
        try:
            yield router
        finally:
            stop.set()
            await task


async def reasons(db: asyncpg.Pool, job_ids: Sequence[str]) -> dict[str, str]:
    """The rejection reasons recorded for these jobs, by job id."""
    rows = await db.fetch(
        """
        SELECT j.job_id::text AS job_id, v.payload->>'reason' AS reason
        FROM jobs j JOIN verdicts v USING (job_id)
        WHERE j.job_id = ANY($1::uuid[]) AND j.status = 'rejected'
        """,
        list(job_ids),
    )
    return {r["job_id"]: r["reason"] for r in rows}


async def test_hostile_jobs_are_rejected_naming_the_field_and_good_ones_beside_them_recorded(
    broker_settings: Settings, router_running: Router
) -> None:
    good = [JobRequest(inputs=[f"good {i}"], redundancy=1) for i in range(5)]
    oversized = str(uuid.uuid4())
    async with Client(broker_settings) as client:
        for i, (raw, _) in enumerate(HOSTILE.values()):
            await client.submit(good[i % len(good)])
            await client.publish_raw(encoded(raw), message_id=raw["job_id"])
        await client.publish_raw(b" " * (MAX_JOB_BYTES + 1), message_id=oversized)

    hostile = {raw["job_id"]: start for raw, start in HOSTILE.values()}
    db = router_running.ledger.pool
    found = await eventually(
        lambda: _all(reasons(db, [*hostile, oversized]), len(hostile) + 1),
        what="every hostile job rejected",
    )
    for job_id, start in hostile.items():
        assert found[job_id].startswith(start), (start, found[job_id])
    assert "over the limit" in found[oversized]

    async def all_good_recorded() -> bool:
        recorded = await db.fetchval(
            "SELECT count(*) FROM jobs WHERE job_id = ANY($1::uuid[])", [j.job_id for j in good]
        )
        return bool(recorded == len(good))

    await eventually(all_good_recorded, what="every good job recorded")


async def _all(pending: Any, count: int) -> dict[str, str] | None:
    found: dict[str, str] = await pending
    return found if len(found) == count else None
