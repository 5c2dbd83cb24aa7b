"""Every message on the wire: frozen, versioned pydantic models, JSON only.

The JSON Schemas under docs/schemas/ are generated from these classes
(`cortensor schemas write`), so that a client in any language can publish a job.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from cortensor.catalog import DEFAULT_MODEL, MODELS, HwClass, HwSpec, Precision, Task

SCHEMA_VERSION: Literal[1] = 1
MAX_REDUNDANCY = 7
MAX_INPUTS = 64
MAX_TEXT_CHARS = 8192
MAX_JOB_BYTES = 1_048_576
MAX_DEADLINE_S = 600.0
DEFAULT_DEADLINE_S = 30.0

NodeId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
    Field(description="Letters, digits, '_' and '-'; used in queue names and subjects."),
]
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
Vector = list[float]
JobStatus = Literal["verified", "rejected", "failed", "inconclusive"]


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Fields every message carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    created_at: datetime = Field(default_factory=utcnow)


class JobRequest(Message):
    """A user's job, published to the jobs exchange."""

    job_id: UUID = Field(default_factory=uuid4)
    task: Task = "embed"
    model: str = Field(
        default="", validate_default=True, description="Empty means the task's default model."
    )
    inputs: list[Text] = Field(min_length=1, max_length=MAX_INPUTS)
    redundancy: int = Field(default=3, ge=1, le=MAX_REDUNDANCY)
    hw_class: HwSpec = Field(
        default="any", description="A hardware class, a precision (fp32, fp16, int8) or any."
    )
    deadline_s: float = Field(default=DEFAULT_DEADLINE_S, gt=0, le=MAX_DEADLINE_S)

    @field_validator("inputs")
    @classmethod
    def _no_blank_inputs(cls, inputs: list[str]) -> list[str]:
        blank = [i for i, text in enumerate(inputs) if not text.strip()]
        if blank:
            raise ValueError(f"inputs {blank} are blank; every input needs some text")
        return inputs

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str, info: ValidationInfo) -> str:
        task = info.data.get("task")
        if task is None:  # the task itself is invalid; that error says enough
            return model
        if not model:
            return DEFAULT_MODEL[task]
        if model not in MODELS[task]:
            known = ", ".join(MODELS[task])
            raise ValueError(f"unknown model {model!r} for task {task!r}; use one of: {known}")
        return model


class Assignment(Message):
    """One replica of a job, sent by the router to one node."""

    assignment_id: UUID = Field(default_factory=uuid4)
    job_id: UUID
    node_id: NodeId
    task: Task
    model: str
    inputs: list[str]
    hw_class: HwClass
    deadline_at: datetime
    attempt: int = 1


class InferenceResult(Message):
    """What a node computed for one assignment (or the error it met)."""

    result_id: UUID = Field(default_factory=uuid4)
    assignment_id: UUID
    job_id: UUID
    node_id: NodeId
    model: str
    hw_class: HwClass
    precision: Precision
    embeddings: list[Vector] | None = None
    error: str | None = None
    elapsed_ms: float = 0.0


class Verdict(Message):
    """The network's final word on a job."""

    job_id: UUID
    status: JobStatus
    reason: str = ""
    task: Task = "embed"
    model: str = ""
    embeddings: list[Vector] | None = None
    canonical_result_id: UUID | None = None
    replicas: int = 0
    agreeing: list[str] = Field(default_factory=list)
    disagreeing: list[str] = Field(default_factory=list)
    timed_out: list[str] = Field(default_factory=list)


class NodeHeartbeat(Message):
    """A node's periodic announcement of what it serves and how busy it is."""

    node_id: NodeId
    hw_class: HwClass
    precision: Precision
    tasks: list[Task]
    models: list[str]
    capacity: int = Field(ge=1, description="Assignments it works on at once, prefetch included.")
    inflight: int = Field(ge=0)
    processed: int = Field(ge=0)
    status: Literal["up", "draining"] = "up"
    started_at: datetime


MESSAGES: dict[str, type[Message]] = {
    cls.__name__: cls for cls in (JobRequest, Assignment, InferenceResult, Verdict, NodeHeartbeat)
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every message, keyed by file name."""
    return {
        f"{name}.schema.json": cls.model_json_schema(mode="validation")
        for name, cls in MESSAGES.items()
    }
