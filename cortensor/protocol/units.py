"""The units a router records and routes: whole jobs, split jobs' parents and parts."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from cortensor.catalog import DEFAULT_MAX_TOKENS
from cortensor.protocol.replication import REPLICAS
from cortensor.schemas import (
    ANONYMOUS,
    DEFAULT_TOP_K,
    Assignment,
    ChatTurn,
    JobRequest,
    LedgerStatus,
)


@dataclass(frozen=True, slots=True)
class OpenJob:
    """A job as the router needs it to (re-)route a replica."""

    job_id: UUID
    task: str
    model: str
    redundancy: int
    """Replicas asked for (for an `auto` job, what the router chose)."""
    hw_class: str
    inputs: list[str]
    """The texts of an embed or classify job; a generate job's prompts, or the contents
    of its conversation's messages (their roles are in params)."""
    deadline_at: datetime
    taken: frozenset[str]
    """Nodes that already hold (or held) a replica of this job."""
    attempt: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)
    """Task options (language, top_k) and, for a part, its place in its parent."""
    audio: bytes | None = None
    parent_id: UUID | None = None
    part: int | None = None
    auto: bool = False
    """The network chooses the redundancy (adaptive replication)."""
    probe: bool = False
    """A known-answer probe; its reference output is in params."""
    owner: str = ANONYMOUS
    """The client that published the job: its verdicts go where only it may read them."""


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to record: a whole job, a split job's parent, or one of its parts."""

    job: OpenJob
    created_at: datetime
    status: LedgerStatus
    assignments: Sequence[Assignment] = ()


def assignments_for(
    job: OpenJob, nodes: Sequence[tuple[str, str]], deadline_at: datetime
) -> list[Assignment]:
    """One replica of `job` for each (node id, hardware class); the task's fields (the
    audio in base64, say) are made once for all of them."""
    fields = task_fields(job.inputs, job.params, job.audio)
    return [
        Assignment(
            job_id=job.job_id,
            node_id=node_id,
            task=job.task,
            model=job.model,
            hw_class=hw_class,
            deadline_at=deadline_at,
            attempt=job.attempt,
            **fields,
        )
        for node_id, hw_class in nodes
    ]


def job_params(job: JobRequest) -> dict[str, Any]:
    """The task options of a job, as kept in the ledger's `params`."""
    params: dict[str, Any] = {}
    if job.task == "classify":
        params["top_k"] = job.top_k
    if job.task == "generate":
        params["max_tokens"] = job.max_tokens
        if job.messages is not None:
            params["roles"] = [turn.role for turn in job.messages]
    if job.language is not None:
        params["language"] = job.language
    return params


def whole_job(
    job: JobRequest,
    deadline_at: datetime,
    audio: bytes | None = None,
    *,
    owner: str = ANONYMOUS,
) -> OpenJob:
    """A job that runs whole, on `redundancy` nodes (`audio`: what its nodes receive), of
    the client `owner` (the router reads it from the routing key the job came with)."""
    return OpenJob(
        job_id=job.job_id,
        task=job.task,
        model=job.model,
        redundancy=REPLICAS if job.redundancy == "auto" else job.redundancy,
        auto=job.redundancy == "auto",
        hw_class=job.hw_class,
        inputs=job_texts(job),
        deadline_at=deadline_at,
        taken=frozenset(),
        params=job_params(job),
        audio=audio,
        owner=owner,
    )


def job_texts(job: JobRequest) -> list[str]:
    """The texts a job's ledger row keeps: its inputs, or its conversation's contents
    (roles go to params, so that purging the texts leaves no content behind)."""
    if job.messages is None:
        return job.inputs
    return [turn.content for turn in job.messages]


def task_fields(
    inputs: list[str], params: Mapping[str, Any], audio: bytes | None
) -> dict[str, Any]:
    """The task-specific fields of an Assignment, from a job's ledger row."""
    roles = params.get("roles")
    messages = (
        None
        if roles is None
        else [ChatTurn(role=role, content=text) for role, text in zip(roles, inputs, strict=True)]
    )
    return {
        "inputs": inputs if messages is None else [],
        "messages": messages,
        "audio": None if audio is None else base64.b64encode(audio).decode("ascii"),
        "language": params.get("language"),
        "top_k": params.get("top_k", DEFAULT_TOP_K),
        "max_tokens": params.get("max_tokens", DEFAULT_MAX_TOKENS),
    }
