"""What becomes of a dead letter: every message in the dead-letter queue ends as a job's
terminal verdict, a node task dropped, or a message parked with its reason.

Pure logic (cortensor.services.router.dead reads the queue and applies the decision),
so that every shape of dead letter is tested fast.

A message reaches the dead-letter exchange in one of two ways:
- RabbitMQ dead-lettered it from a queue (the router's or a node's) past the queue's
  `x-delivery-limit`: its `x-death` header has an entry for that queue (which a
  publisher cannot remove), and it keeps the routing key it was published with (a
  job's names its owner), and its publisher's other headers;
- the router dead-lettered it itself (`JobQueue.dead_letter`): no `x-death`, the reason
  in `x-cortensor-reason`, published under the job's own routing key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from cortensor.protocol.intake import Rejected, Undeliverable, read_job
from cortensor.schemas import MAX_ERROR_CHARS, Verdict, printable

REASON_HEADER = "x-cortensor-reason"
"""Why a message was dead-lettered or parked, in words."""
FAULT_HEADER = "x-cortensor-fault"
"""Set to `input` by a router that dead-lettered a job because of its content."""
TASK_HEADER = "task"
"""The header every Celery task message carries (a node's assignments)."""
REASON_CHARS = 1000
"""The longest reason a dead letter's header carries."""


def dead_letter_headers(reason: str, *, input_at_fault: bool) -> dict[str, Any]:
    """The headers of a message a router dead-letters: its reason, and whether its
    content is to blame (the same on RabbitMQ and its in-memory twin)."""
    headers: dict[str, Any] = {REASON_HEADER: reason[:REASON_CHARS]}
    if input_at_fault:
        headers[FAULT_HEADER] = "input"
    return headers


@dataclass(frozen=True, slots=True)
class Death:
    """What RabbitMQ recorded when it dead-lettered a message from a queue."""

    queue: str
    reason: str = ""
    count: int = 0
    at: datetime | None = None
    routing_key: str = ""


def death_of(headers: Mapping[str, Any], queue: str) -> Death | None:
    """The death RabbitMQ recorded in `x-death` for `queue`; else the oldest it recorded
    for another queue; None when it recorded none (the router parked the message
    itself). Tolerant of anything a hostile publisher may have put in the headers: a
    job's own headers travel with it, but RabbitMQ adds the entry of the queue that
    really dead-lettered it, so an entry naming `queue` is never taken on trust alone
    from the other entries."""
    entries = headers.get("x-death")
    if not isinstance(entries, list | tuple):
        return None
    tables = [e for e in entries if isinstance(e, Mapping) and isinstance(e.get("queue"), str)]
    if not tables:
        return None
    entry = next((e for e in tables if e["queue"] == queue), tables[-1])
    count, at, reason = entry.get("count"), entry.get("time"), entry.get("reason")
    keys = entry.get("routing-keys")
    first_key = keys[0] if isinstance(keys, list | tuple) and keys else ""
    return Death(
        queue=entry["queue"],
        reason=reason if isinstance(reason, str) else "",
        count=count if isinstance(count, int) and not isinstance(count, bool) else 0,
        at=at if isinstance(at, datetime) else None,
        routing_key=first_key if isinstance(first_key, str) else "",
    )


@dataclass(frozen=True, slots=True)
class EndJob:
    """A readable job: record `verdict` unless the ledger knows the job already (then it
    ends by its own deadline), and publish it once. `request` is what the ledger keeps
    of it."""

    verdict: Verdict
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DropTask:
    """A node's task message past its queue's delivery limit: its assignments are in
    the ledger, time out at their deadline and are routed again by the router's sweep
    (which charges the node `timed_out` once, as for any late assignment). Nothing to
    keep."""

    queue: str
    reason: str


@dataclass(frozen=True, slots=True)
class Park:
    """A message nobody can end: kept in the parked queue with `reason`."""

    reason: str
    job_id: UUID | None = None
    owner: str | None = None


Decision = EndJob | DropTask | Park


def _why(headers: Mapping[str, Any], death: Death | None, *, delivery_limit: int) -> str:
    """Why the job never got through, from its death and the router's reason."""
    said = headers.get(REASON_HEADER) if death is None else None
    parts = []
    if death is not None:
        if death.reason == "delivery_limit":
            tries = f" in {delivery_limit + 1} deliveries" if delivery_limit else ""
            parts.append(
                f"it exhausted its deliveries: the router could not record it{tries}"
                f" (queue {death.queue} dead-lettered it past x-delivery-limit"
                f" {delivery_limit or '?'}; x-death count {death.count})"
            )
        else:
            parts.append(
                f"queue {death.queue} dead-lettered it ({death.reason or 'no reason given'};"
                f" x-death count {death.count})"
            )
    if isinstance(said, str) and said:
        parts.append(f"the router could not take it: {said}")
    return "; ".join(parts) or "it was dead-lettered without a reason"


def decide(
    body: bytes,
    *,
    message_id: str,
    headers: Mapping[str, Any],
    owner: str | None,
    router_queue: str,
    delivery_limit: int,
) -> Decision:
    """What to do with one dead letter.

    `owner` is the owner its routing key names (None: it names nobody); `router_queue`
    the queue jobs are taken from, whose `delivery_limit` says how often it delivers.
    """
    death = death_of(headers, router_queue)
    if death is not None and death.queue != router_queue:
        if TASK_HEADER in headers:
            return DropTask(
                death.queue,
                f"node queue {death.queue} dead-lettered a task message"
                f" ({death.reason or 'no reason given'})",
            )
        return Park(f"dead-lettered from queue {death.queue}, which holds no jobs")
    # The router's own headers are believed only on a message the router dead-lettered
    # itself: a job that RabbitMQ dead-lettered still carries its publisher's headers.
    said = headers.get(REASON_HEADER) if death is None else None
    outcome = read_job(body, message_id)
    if isinstance(outcome, Undeliverable):
        reason = said if isinstance(said, str) and said else outcome.reason
        return Park(printable(reason, MAX_ERROR_CHARS))
    job_id = outcome.job_id
    if owner is None:
        return Park(
            printable(
                said if isinstance(said, str) and said else "its routing key names no owner",
                MAX_ERROR_CHARS,
            ),
            job_id=job_id,
        )
    why = _why(headers, death, delivery_limit=delivery_limit)
    if isinstance(outcome, Rejected):
        task = outcome.request.get("task", "embed")
        reason = f"{outcome.reason} (and {why})"
        return EndJob(
            Verdict(
                job_id=job_id,
                owner=owner,
                status="rejected",
                reason=printable(reason, MAX_ERROR_CHARS),
                task=task,
            ),
            outcome.request,
        )
    at_fault = death is None and headers.get(FAULT_HEADER) == "input"
    advice = "" if at_fault else "; submit it again"
    return EndJob(
        Verdict(
            job_id=job_id,
            owner=owner,
            status="rejected" if at_fault else "failed",
            reason=printable(
                f"the network could not take this job: {why}{advice}", MAX_ERROR_CHARS
            ),
            task=outcome.task,
            model=outcome.model,
        ),
        {"task": outcome.task},
    )
