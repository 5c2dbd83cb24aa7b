"""`cortensor dead`: what waits in the dead-letter and parked queues, and replaying it.

The operator's tool (admin credentials: only the admin and the routers may read these
queues, which hold user content). Messages are looked at with `basic.get` and held
unsettled until the command ends, then given back (or acked, when replayed or purged),
so that looking never consumes anything and every message is seen once per look.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused

from cortensor.adapters import amqp
from cortensor.adapters.topology import Topology
from cortensor.errors import BadInput, BadSetting, BrokerUnavailable
from cortensor.protocol.dead import REASON_HEADER, EndJob, Park, death_of, decide
from cortensor.protocol.intake import Undeliverable, read_job
from cortensor.services.router.dead import DELIVERIES_HEADER, DIED_HEADER, FROM_HEADER, deliveries
from cortensor.settings import Settings

DEFAULT_LIMIT = 100
"""Messages looked at per queue unless told otherwise."""


@dataclass(frozen=True, slots=True)
class DeadMessage:
    """One message of the dead-letter or parked queue, as `cortensor dead list` shows it."""

    id: str
    """Its message id, or `sha256:` and the start of its body's hash when it has none."""
    queue: str
    """`dead` (the routers' reader has not handled it yet) or `parked`."""
    job_id: str | None
    owner: str | None
    reason: str
    deliveries: int
    died_at: str
    """When it was first dead-lettered (ISO 8601), as far as is known."""
    size: int
    """Its body's length in bytes."""

    def row(self) -> dict[str, Any]:
        """The message as a table row (JSON data)."""
        return asdict(self)


def message_key(message_id: str | None, body: bytes) -> str:
    """What `cortensor dead` calls a message: its id, or its body's hash without one."""
    return message_id or f"sha256:{hashlib.sha256(body).hexdigest()[:16]}"


def describe(message: AbstractIncomingMessage, queue: str, topology: Topology) -> DeadMessage:
    """A message of the dead-letter queue (as the routers' reader would judge it) or of the
    parked queue (as the reader judged it)."""
    headers: Mapping[str, Any] = message.headers or {}
    body, message_id = message.body, message.message_id or ""
    owner = topology.owner_of(message.routing_key or "")
    read = read_job(body, message_id)
    job_id = None if isinstance(read, Undeliverable) else str(read.job_id)
    if queue == "parked":
        reason = str(headers.get(REASON_HEADER, ""))
        count = headers.get(DELIVERIES_HEADER, 1)
        died = str(headers.get(DIED_HEADER, ""))
        source = str(headers.get(FROM_HEADER, ""))
        reason = f"{reason} (from {source})" if source else reason
    else:
        death = death_of(headers, topology.router_queue)
        decision = decide(
            body,
            message_id=message_id,
            headers=headers,
            owner=owner,
            router_queue=topology.router_queue,
            delivery_limit=topology.router_delivery_limit,
        )
        if isinstance(decision, EndJob):
            reason = f"to end {decision.verdict.status}: {decision.verdict.reason}"
        elif isinstance(decision, Park):
            reason = f"to park: {decision.reason}"
        else:
            reason = f"to drop: {decision.reason}"
        count = deliveries(death, topology)
        died = death.at.isoformat() if death is not None and death.at else ""
    return DeadMessage(
        id=message_key(message.message_id, body),
        queue=queue,
        job_id=job_id,
        owner=owner,
        reason=reason,
        deliveries=count if isinstance(count, int) else 1,
        died_at=died,
        size=len(body),
    )


@asynccontextmanager
async def _channel(settings: Settings) -> AsyncIterator[AbstractChannel]:
    """A confirmed channel as the operator; everything it got and did not ack goes back
    to its queue when it closes."""
    try:
        connection = await amqp.connect_as(settings)
    except ConnectionError as exc:
        where = settings.amqp_url.rsplit("@", 1)[-1]
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {where}: {exc}") from exc
    async with connection:
        yield await connection.channel(publisher_confirms=True)


async def _held(
    channel: AbstractChannel, topology: Topology, limit: int
) -> AsyncIterator[tuple[str, AbstractIncomingMessage]]:
    """Up to `limit` messages of each queue, held unsettled (so none is seen twice)."""
    for short, name in (("dead", topology.dead_letter_queue), ("parked", topology.parked_queue)):
        try:
            queue = await channel.get_queue(name)
            first = await queue.get(no_ack=False, fail=False)
        except ChannelAccessRefused as exc:
            raise BadSetting(
                f"RabbitMQ refused to show {name}: dead and parked messages hold user content,"
                " and only the admin reads them; run this with the admin's credentials"
                " (--credentials or CORTENSOR_CREDENTIALS)"
            ) from exc
        message, seen = first, 0
        while message is not None and seen < limit:
            yield short, message
            seen += 1
            if seen < limit:
                message = await queue.get(no_ack=False, fail=False)


async def list_dead(settings: Settings, *, limit: int = DEFAULT_LIMIT) -> list[DeadMessage]:
    """What waits in the dead-letter queue and the parked queue, without consuming it."""
    topology = Topology(settings.namespace)
    async with _channel(settings) as channel:
        return [describe(m, q, topology) async for q, m in _held(channel, topology, limit)]


@dataclass(frozen=True, slots=True)
class Replay:
    """What `cortensor dead replay` did with one message."""

    id: str
    replayed: bool
    why: str


async def _refusal(
    ledger: asyncpg.Connection, message: AbstractIncomingMessage, topology: Topology
) -> str | None:
    """Why a dead message cannot be sent again as a job (None: it can)."""
    read = read_job(message.body, message.message_id or "")
    if isinstance(read, Undeliverable):
        return f"unreadable, nothing to replay: {read.reason}"
    if topology.owner_of(message.routing_key or "") is None:
        return (
            f"its routing key {message.routing_key!r} names no owner: nobody could read its"
            " verdict; its owner must submit it again"
        )
    row = await ledger.fetchrow(
        """
        SELECT j.status, v.status AS verdict, v.reason
        FROM jobs j LEFT JOIN verdicts v USING (job_id) WHERE j.job_id = $1
        """,
        read.job_id,
    )
    if row is None:
        return None
    if row["verdict"] is not None:
        return f"job {read.job_id} already has its verdict: {row['verdict']} ({row['reason']})"
    return f"job {read.job_id} is open in the ledger ({row['status']}): it ends by its own deadline"


async def replay(
    settings: Settings, ids: set[str] | None, *, limit: int = DEFAULT_LIMIT
) -> list[Replay]:
    """Send the named dead or parked jobs (`ids`; None: every one) back to the jobs
    exchange under their own routing key, where they never got a verdict; say why not
    for the others named. A replayed message leaves its queue."""
    topology = Topology(settings.namespace)
    done: list[Replay] = []
    ledger = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        async with _channel(settings) as channel:
            jobs = await channel.get_exchange(topology.jobs_exchange)
            async for _, message in _held(channel, topology, limit):
                key = message_key(message.message_id, message.body)
                if ids is not None and key not in ids:
                    continue
                refused = await _refusal(ledger, message, topology)
                if refused is not None:
                    done.append(Replay(key, False, refused))
                    continue
                await jobs.publish(
                    amqp.json_message(message.body, message_id=message.message_id or ""),
                    routing_key=message.routing_key or "",
                )
                await message.ack()  # after the broker confirmed the job
                done.append(Replay(key, True, f"sent again under {message.routing_key}"))
    finally:
        await ledger.close()
    missing = (ids or set()) - {r.id for r in done}
    if missing:
        raise BadInput(
            f"nothing dead or parked is called {', '.join(sorted(missing))}: see `cortensor dead"
            " list` for the ids"
        )
    return done


async def purge(settings: Settings) -> int:
    """Remove every parked message; returns how many there were."""
    topology = Topology(settings.namespace)
    async with _channel(settings) as channel:
        queue = await channel.get_queue(topology.parked_queue)
        result = await queue.purge()
        return int(result.message_count or 0)


def parse_ids(values: list[str]) -> set[str]:
    """The ids given on the command line (message ids, `sha256:` keys, job ids)."""
    for value in values:
        if not value or len(value) > 200:
            raise BadInput(f"{value[:40]!r} is not an id that `cortensor dead list` shows")
    return set(values)
