"""Reading a job off the wire: every byte string ends as a job, a rejection or a dead letter.

Pure logic, so that bad input of every shape is tested fast and exhaustively.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from cortensor.schemas import MAX_JOB_BYTES, SCHEMA_VERSION, JobRequest


@dataclass(frozen=True, slots=True)
class Rejected:
    """A job whose id could be read but whose request is not acceptable."""

    job_id: UUID
    reason: str
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A message with no readable job id: it goes to the dead-letter queue."""

    reason: str


def explain(exc: ValidationError) -> str:
    """A validation error as one line per problem, each naming the field to fix."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "job"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def read_job(body: bytes) -> JobRequest | Rejected | Undeliverable:
    """Classify one message from the jobs queue."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; so is an integer
        # of more than 4300 digits. Deep nesting exhausts the recursion limit.
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
    if raw.get("schema_version") != SCHEMA_VERSION:
        return Rejected(
            job_id,
            f"schema_version {raw.get('schema_version')!r} is not supported;"
            f" this network speaks schema_version {SCHEMA_VERSION}",
            raw,
        )
    if len(body) > MAX_JOB_BYTES:
        return Rejected(
            job_id,
            f"job is {len(body)} bytes, over the limit of {MAX_JOB_BYTES};"
            " split it into smaller jobs",
            {"job_id": str(job_id)},
        )
    try:
        return JobRequest.model_validate(raw)
    except ValidationError as exc:
        return Rejected(job_id, explain(exc), raw)
