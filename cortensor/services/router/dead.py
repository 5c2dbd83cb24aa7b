"""The router's dead-letter reader: every readable job in the dead-letter queue ends.

Each dead letter meets the decision of cortensor.protocol.dead: a readable job is given
a terminal verdict (`failed`, or `rejected` when its content is at fault) through the
ledger and the verdicts stream, once however often it is delivered; a node's task
message is dropped (its assignments time out and are routed again by the sweep); what
nobody can end is parked, with its reason, for `cortensor dead` to show.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

import structlog

from cortensor.adapters.interfaces import DeadLetterQueue, Delivery
from cortensor.adapters.ledger.interfaces import RouterBook
from cortensor.adapters.topology import Topology
from cortensor.errors import backoff_s
from cortensor.protocol.dead import (
    REASON_HEADER,
    Death,
    Decision,
    DropTask,
    EndJob,
    Park,
    death_of,
    decide,
)
from cortensor.schemas import MAX_ERROR_CHARS, printable, utcnow
from cortensor.services.announce import Announcer
from cortensor.settings import Settings

log = structlog.get_logger(__name__)
_JITTER = random.Random()

FROM_HEADER = "x-cortensor-from"
"""On a parked message: the queue that dead-lettered it, or `router`."""
DELIVERIES_HEADER = "x-cortensor-deliveries"
"""On a parked message: how often it was delivered before it was dead-lettered."""
DIED_HEADER = "x-cortensor-died-at"
"""On a parked message: when it was first dead-lettered (ISO 8601)."""
JOB_HEADER = "x-cortensor-job-id"
"""On a parked message: its job id, when one could be read."""
PARKED_HEADERS = (REASON_HEADER, FROM_HEADER, DELIVERIES_HEADER, DIED_HEADER, JOB_HEADER)


def deliveries(death: Death | None, topology: Topology) -> int:
    """How often a dead letter was delivered before it died, as far as is known."""
    if death is None:
        return 1  # the router dead-lettered it on its first failure that cannot pass
    if death.queue == topology.router_queue and death.reason == "delivery_limit":
        return topology.router_delivery_limit + 1
    return max(death.count, 1)


class DeadLetterReader:
    """Consumes the dead-letter queue beside a router and ends what it finds there."""

    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        ledger: RouterBook,
        queue: DeadLetterQueue,
        announcer: Announcer,
    ) -> None:
        self.settings, self.topology, self.ledger = settings, topology, ledger
        self.queue, self.announcer = queue, announcer

    async def start(self) -> None:
        """Start consuming; `stop` ends it."""
        await self.queue.consume(self.on_dead)
        log.info("dead-letter reader ready", queue=self.topology.dead_letter_queue)

    async def stop(self) -> None:
        """Stop consuming; the dead letters in hand are settled as they finish."""
        await self.queue.cancel()

    def owner(self, message: Delivery) -> str | None:
        """The owner a dead job's routing key names (RabbitMQ keeps the key it was
        published with; `x-death` records it too)."""
        owner = self.topology.owner_of(message.routing_key or "")
        if owner is None:
            death = death_of(message.headers, self.topology.router_queue)
            if death is not None and death.queue == self.topology.router_queue:
                owner = self.topology.owner_of(death.routing_key)
        return owner

    def decide(self, message: Delivery) -> Decision:
        """What to do with a dead letter (cortensor.protocol.dead.decide); a message that
        the decision itself cannot read is parked, never retried for ever."""
        try:
            return decide(
                message.body,
                message_id=message.message_id or "",
                headers=message.headers,
                owner=self.owner(message),
                router_queue=self.topology.router_queue,
                delivery_limit=self.topology.router_delivery_limit,
            )
        except Exception as exc:
            log.exception("dead letter unreadable", message_id=message.message_id)
            return Park(printable(f"the dead-letter reader could not read it: {exc!r}", 500))

    async def on_dead(self, message: Delivery) -> None:
        """Handle one dead letter and ack it once what it led to is durable. A failure
        (the ledger or a broker under us) puts it back after a back-off: the dead-letter
        queue has no delivery limit, so a job waits there until it can be ended."""
        decision = self.decide(message)
        try:
            outcome = await self.apply(message, decision)
        except Exception as exc:
            s = self.settings
            tries = int(message.headers.get("x-delivery-count", 0) or 0) + 1
            wait = backoff_s(tries, base_s=s.retry_base_s, cap_s=s.retry_cap_s, rng=_JITTER)
            log.warning(
                "dead letter not handled; again later",
                message_id=message.message_id,
                error=printable(repr(exc), 300),
                retry_in_s=round(wait, 2),
            )
            await asyncio.sleep(wait)
            await message.nack(requeue=True)
            return
        await message.ack()
        log.info("dead letter handled", message_id=message.message_id, outcome=outcome)

    async def apply(self, message: Delivery, decision: Decision) -> str:
        """Carry out a decision; returns what became of the message."""
        match decision:
            case EndJob(verdict=verdict, request=request):
                if await self.ledger.reject(verdict.job_id, request, verdict):
                    await self.announcer.publish([verdict])
                    log.warning(
                        "dead job ended",
                        job_id=str(verdict.job_id),
                        status=verdict.status,
                        reason=verdict.reason,
                    )
                    return verdict.status
                # Known already: it has its verdict, or it is open in the ledger and ends
                # by its own deadline (the sweeps re-route it or fail it).
                return "known"
            case DropTask(queue=queue, reason=reason):
                log.warning("dead task dropped; its assignments time out", queue=queue, why=reason)
                return "dropped"
            case Park():
                await self.queue.park(
                    message.body,
                    message_id=message.message_id or "",
                    routing_key=message.routing_key or "",
                    headers=self.parked_headers(message, decision),
                )
                log.warning("dead letter parked", message_id=message.message_id)
                return "parked"

    def parked_headers(self, message: Delivery, decision: Park) -> Mapping[str, Any]:
        """What a parked message carries for `cortensor dead list`."""
        death = death_of(message.headers, self.topology.router_queue)
        headers: dict[str, Any] = {
            REASON_HEADER: printable(decision.reason, MAX_ERROR_CHARS),
            FROM_HEADER: death.queue if death is not None else "router",
            DELIVERIES_HEADER: deliveries(death, self.topology),
            DIED_HEADER: (death.at if death is not None and death.at else utcnow()).isoformat(),
        }
        if decision.job_id is not None:
            headers[JOB_HEADER] = str(decision.job_id)
        return headers
