"""Reading a job off the wire: every byte string ends as a job, a rejection or a dead letter.

Pure logic, so that bad input of every shape is tested fast and exhaustively.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from cortensor.catalog import TASKS
from cortensor.schemas import MAX_ERROR_CHARS, MAX_JOB_BYTES, SCHEMA_VERSION, JobRequest, printable


@dataclass(frozen=True, slots=True)
class Rejected:
    """A job whose id could be read but whose request is not acceptable. `request`
    keeps only what the ledger records of it (its task, when that is one)."""

    job_id: UUID
    reason: str
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A message with no readable job id: it goes to the dead-letter queue."""

    reason: str


def explain(exc: ValidationError, limit: int = MAX_ERROR_CHARS) -> str:
    """A validation error as one line per problem, each naming the field to fix; at
    most `limit` characters, and never the sender's text verbatim (a field name of its
    invention is cut short and its NULs escaped), so that the reason can be stored."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(printable(str(p), 40) for p in error["loc"]) or "job"
        message = printable(error["msg"].removeprefix("Value error, "), 200)
        parts.append(f"{where}: {message}")
    reason = "; ".join(parts)
    if len(reason) <= limit:
        return reason
    return f"{reason[: limit - 40]}... ({exc.error_count()} problems in all)"


def _recorded(raw: dict[str, Any]) -> dict[str, Any]:
    """What the ledger keeps of a rejected request: its task, when it names one."""
    task = raw.get("task")
    return {"task": task} if isinstance(task, str) and task in TASKS else {}


def _integer(digits: str) -> int | Decimal:
    """A JSON integer. One past int()'s limit (4300 digits) is kept as a Decimal, which no
    field takes, so that the field is named in a rejection rather than the whole message
    dead-lettered as not JSON."""
    try:
        return int(digits)
    except ValueError:
        return Decimal(digits)


def read_job(body: bytes, message_id: str = "") -> JobRequest | Rejected | Undeliverable:
    """Classify one message from the jobs queue.

    A body over MAX_JOB_BYTES is refused before it is parsed: rejected under the
    message id when that is a job id (the client publishes each job under its own),
    dead-lettered otherwise.
    """
    if len(body) > MAX_JOB_BYTES:
        reason = (
            f"job is {len(body)} bytes, over the limit of {MAX_JOB_BYTES};"
            " split it into smaller jobs"
        )
        try:
            return Rejected(UUID(message_id), reason, {})
        except ValueError:
            return Undeliverable(f"{reason} (and its message id is not its job id)")
    try:
        # strict=False reads control characters left raw inside strings (a NUL byte
        # among them), so that the field holding one is named in a rejection rather
        # than the whole message dead-lettered as not JSON.
        raw = json.loads(body, strict=False, parse_int=_integer)
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors. Deep nesting
        # exhausts the recursion limit.
        reason = str(exc)[:200] or type(exc).__name__
        return Undeliverable(f"message is not usable JSON ({reason}); publish a JobRequest")
    if not isinstance(raw, dict):
        return Undeliverable(
            f"message is JSON {type(raw).__name__}, not an object; publish a JobRequest"
        )
    try:
        job_id = UUID(str(raw["job_id"]))
    except KeyError:
        return Undeliverable("message has no job_id; every JobRequest needs a UUID job_id")
    except ValueError:
        return Undeliverable(f"job_id {str(raw['job_id'])[:80]!r} is not a UUID")
    version = raw.get("schema_version", SCHEMA_VERSION)  # optional, as the schema says
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        return Rejected(
            job_id,
            f"schema_version {printable(repr(version), 40)} is not"
            f" supported; this network speaks schema_version {SCHEMA_VERSION}",
            _recorded(raw),
        )
    try:
        return JobRequest.model_validate(raw)
    except ValidationError as exc:
        return Rejected(job_id, explain(exc), _recorded(raw))
