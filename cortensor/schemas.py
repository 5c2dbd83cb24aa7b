"""Every message on the wire: frozen, versioned pydantic models, JSON only.

The JSON Schemas under docs/schemas/ are generated from these classes
(`cortensor schemas write`), so that a client in any language can publish a job.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args
from uuid import UUID, uuid4

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainValidator,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from cortensor.catalog import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL,
    EMBEDDING_DIM,
    ENGLISH_ONLY,
    MAX_MAX_TOKENS,
    MODELS,
    PRECISION,
    TASKS,
    TEXT_TASKS,
    HwClass,
    HwSpec,
    Precision,
    Task,
)
from cortensor.errors import BadInput

SCHEMA_VERSION: Literal[1] = 1
MAX_REDUNDANCY = 7
MAX_INPUTS = 1024
MAX_TEXT_CHARS = 8192
MAX_AUDIO_BYTES = 8 * 1_048_576
"""Largest audio file a transcribe job may carry, before base64."""
MAX_AUDIO_CHARS = 4 * -(-MAX_AUDIO_BYTES // 3)
"""The base64 text of the largest audio file."""
MAX_JOB_BYTES = 12 * 1_048_576
"""Largest job message: base64 audio at the limit plus the rest of the request."""
MAX_NAME_CHARS = 64
"""Longest model or build name, and the longest name a node or client may have."""
MAX_LABEL_CHARS = 128
"""Longest class label a classifier may answer."""
MAX_ERROR_CHARS = 2000
"""Longest error a node may report instead of an output."""
MAX_EMBEDDING_DIM = max(EMBEDDING_DIM.values())
"""Most numbers in one embedding: the widest of the catalog's embedding models."""
MAX_TRANSCRIPT_CHARS = 262_144
"""Longest transcript: hours of fast speech, far above the audio a job may carry."""
MAX_SEGMENTS = 16_384
"""Most segments in one transcript (Whisper makes a few per 30 s window)."""
MAX_LANGUAGE_CHARS = 16
"""Longest language code a transcript may name."""
MAX_MODELS = 32
"""Most models a node may announce."""
MAX_CAPACITY = 1024
"""Most assignments a node may say it works on at once."""
MAX_COUNT = 2**53
"""Bound of a node's counters: any number a JSON reader in another language reads exactly."""
MAX_RESULT_BYTES = 16 * 1_048_576
"""Largest result message the guard reads: the largest the schema admits (MAX_INPUTS
embeddings of MAX_EMBEDDING_DIM numbers of at most 25 characters each, ~9.4 MiB) with
room for the rest. NATS refuses messages over its max_payload (1 MiB unless set) first."""
MAX_HEARTBEAT_BYTES = 16_384
"""Largest heartbeat message the router reads (a real one is a few hundred bytes)."""
DEFAULT_TOP_K = 5
"""Labels a classify job returns per text unless it asks for another number."""
MAX_TOP_K = 20
MAX_PROMPTS = 64
"""Most prompts one generate job may carry (each is decoded alone, token by token)."""
MAX_TURNS = 64
"""Most messages in the conversation of one generate job."""
MAX_DEADLINE_S = 600.0
DEFAULT_DEADLINE_S = 30.0

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""What PostgreSQL text and jsonb cannot hold: NUL, and lone UTF-16 surrogates (JSON's
`"\\ud800"` reads as one in Python; UTF-8 has no encoding for it)."""
NO_NUL_PATTERN = "^[^\\u0000]*$"
"""The JSON Schema pattern of every free-text field (a lone surrogate is not valid
Unicode text in any language's JSON writer, so the pattern need not name it)."""


def storable(value: str) -> str:
    """`value` unchanged if the ledger can store it; BadInput naming what it holds
    otherwise (pydantic reports it as the field's error)."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return value
    char = found.group()
    what = "a NUL character (U+0000)" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
    raise BadInput(f"holds {what} at position {found.start()}; text may not contain it")


def printable(value: str, limit: int = 80) -> str:
    """`value` safe to quote in a reason, a log line or a stored error: its NULs and lone
    surrogates written as escapes, and at most `limit` characters in all."""
    escaped = _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", value[: limit + 1])
    return escaped if len(escaped) <= limit else f"{escaped[: limit - 3]}..."


@dataclass(frozen=True, slots=True)
class _Storable:
    """Field marker: the string must be storable (see `storable`); its JSON Schema
    says so with NO_NUL_PATTERN."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(storable, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        found = handler(schema)
        found.setdefault("pattern", NO_NUL_PATTERN)
        return found


STORABLE = _Storable()

NodeId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
    Field(description="Letters, digits, '_' and '-'; used in queue names and subjects."),
]
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS), STORABLE]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS), STORABLE]
"""A model or build name."""
Label = Annotated[str, StringConstraints(max_length=MAX_LABEL_CHARS), STORABLE]
ErrorText = Annotated[str, StringConstraints(max_length=MAX_ERROR_CHARS), STORABLE]
Vector = Annotated[list[float], Field(max_length=MAX_EMBEDDING_DIM)]
JobStatus = Literal["verified", "rejected", "failed", "inconclusive"]
"""How a job ends, as its verdict says: verified, rejected (bad input), failed (no node
could do it) or inconclusive (no agreement)."""
TERMINAL_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
LedgerStatus = Literal["waiting", "running", "split"]
"""Where a job stands in the ledger before it ends: waiting for nodes, running on them,
or split into parts that run as jobs of their own."""
LEDGER_STATUSES: tuple[LedgerStatus, ...] = get_args(LedgerStatus)
OPEN_STATUSES: tuple[LedgerStatus, ...] = ("waiting", "running")
"""Jobs a router still works on (a split job's parts are jobs of their own)."""
Language = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z]{2,3}$"),
    Field(description="An ISO 639-1 language code such as 'en'."),
]


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _redundancy(value: Any) -> int | Literal["auto"]:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"must be auto or a whole number from 1 to {MAX_REDUNDANCY}")
    if not 1 <= value <= MAX_REDUNDANCY:
        raise BadInput(f"must be auto or from 1 to {MAX_REDUNDANCY}, not {value}")
    return value


Redundancy = Annotated[
    int | Literal["auto"],
    PlainValidator(_redundancy),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_REDUNDANCY},
                {"const": "auto", "type": "string"},
            ]
        }
    ),
]


class Message(BaseModel):
    """Fields every message carries. No number may be NaN or infinite: JSON has no way
    to write them, and the ledger's jsonb refuses them."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: Literal[1] = SCHEMA_VERSION
    created_at: datetime = Field(default_factory=utcnow)


class Output(BaseModel):
    """Part of a task's output."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class LabelScore(Output):
    """One class and its probability."""

    label: Label
    score: float


class Classification(Output):
    """A classifier's answer for one text: the top label and the k best with scores."""

    label: Label
    score: float
    top: list[LabelScore] = Field(max_length=MAX_TOP_K)


GENERATION_CHARS_PER_TOKEN = 64
"""The most characters one generated token may add (the longest piece in SmolLM2's
vocabulary is well below it)."""
MAX_GENERATION_CHARS = MAX_MAX_TOKENS * GENERATION_CHARS_PER_TOKEN
MAX_TOKEN_ID = 2**31 - 1

Role = Literal["system", "user", "assistant"]


class ChatTurn(Output):
    """One message of a conversation a generate job continues."""

    role: Role
    content: Text


class Generation(Output):
    """A language model's answer to one prompt, decoded greedily."""

    text: Annotated[str, StringConstraints(max_length=MAX_GENERATION_CHARS), STORABLE]
    tokens: list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID, strict=True)]] = Field(
        max_length=MAX_MAX_TOKENS,
        description="The new tokens' ids, end-of-turn token left out; `text` decodes them.",
    )
    finish_reason: Literal["stop", "length"] = Field(
        description="stop: the model ended its turn; length: max_tokens was reached."
    )


class Segment(Output):
    """A stretch of speech and its words; times in seconds from the start of the audio."""

    start: float
    end: float
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS), STORABLE]


class Transcript(Output):
    """Speech turned into text."""

    text: Annotated[str, StringConstraints(max_length=MAX_TRANSCRIPT_CHARS), STORABLE]
    language: Annotated[str, StringConstraints(max_length=MAX_LANGUAGE_CHARS), STORABLE]
    duration_s: float
    segments: list[Segment] = Field(max_length=MAX_SEGMENTS)


OUTPUT_FIELD: dict[Task, str] = {
    "embed": "embeddings",
    "classify": "classes",
    "transcribe": "transcript",
    "generate": "generations",
}
"""The field of an InferenceResult or Verdict that holds each task's output."""


def _output_json(message: BaseModel, task: Task) -> Any:
    value = getattr(message, OUTPUT_FIELD[task])
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def decode_audio_field(value: str) -> bytes:
    """The bytes of a base64 audio field; BadInput when it is not base64."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("audio is not valid base64; send the file's bytes in base64") from None


class JobRequest(Message):
    """A user's job, published to the jobs exchange.

    Only job_id is required: the verdict is published under it, and a message without a
    readable one is dead-lettered. Every other field may be left out and takes its
    default. Numbers are JSON numbers and times RFC 3339 strings ("5" is not 5)."""

    # On the wire job_id is required; in Python the SDK makes one up when not given.
    model_config = ConfigDict(json_schema_extra={"required": ["job_id"]})

    job_id: UUID = Field(
        default_factory=uuid4,
        description="Chosen by the client; the verdict is published under it.",
    )
    created_at: datetime = Field(
        default_factory=utcnow,
        description="RFC 3339, with its UTC offset; left out, the time the router reads the job.",
    )
    task: Task = "embed"
    model: Name = Field(
        default="", validate_default=True, description="Empty means the task's default model."
    )
    inputs: list[Text] = Field(
        default=[],
        validate_default=True,
        max_length=MAX_INPUTS,
        description=(
            "The texts of an embed or classify job; the prompts of a generate job (each"
            f" answered on its own, at most {MAX_PROMPTS})."
        ),
    )
    messages: list[ChatTurn] | None = Field(
        default=None,
        validate_default=True,
        max_length=MAX_TURNS,
        description=(
            "generate: a conversation to continue instead of inputs; the answer is to its"
            " last message, which must be the user's."
        ),
    )
    audio: Annotated[str, StringConstraints(max_length=MAX_AUDIO_CHARS)] | None = Field(
        default=None,
        validate_default=True,
        description=(
            "The audio file of a transcribe job (WAV, FLAC, MP3 or OGG), base64-encoded;"
            f" at most {MAX_AUDIO_BYTES} bytes before encoding."
        ),
    )
    language: Language | None = Field(
        default=None, description="transcribe: the spoken language; empty means detect it."
    )
    top_k: int = Field(
        default=DEFAULT_TOP_K,
        ge=1,
        le=MAX_TOP_K,
        strict=True,
        description="classify: labels returned.",
    )
    max_tokens: int = Field(
        default=DEFAULT_MAX_TOKENS,
        ge=1,
        le=MAX_MAX_TOKENS,
        strict=True,
        description="generate: the most new tokens of each answer.",
    )
    redundancy: Redundancy = Field(
        default="auto",
        description=(
            "Replicas on distinct nodes, or auto: the network replicates a job unless the"
            " node chosen first has a long record of valid results, and spot-checks it"
            " at random even then."
        ),
    )
    hw_class: HwSpec = Field(
        default="any", description="A hardware class, a precision (fp32, fp16, int8) or any."
    )
    deadline_s: float = Field(default=DEFAULT_DEADLINE_S, gt=0, le=MAX_DEADLINE_S, strict=True)

    @field_validator("created_at", mode="before")
    @classmethod
    def _created_at_text(cls, value: Any) -> Any:
        # Lax validation would read a number as a Unix time; the schema says a string.
        if isinstance(value, datetime | str):
            return value
        raise BadInput("must be an RFC 3339 date-time string such as 2030-01-02T03:04:05Z")

    @field_validator("created_at")
    @classmethod
    def _created_at_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise BadInput("needs its UTC offset, such as Z or +02:00 (RFC 3339)")
        try:
            return value.astimezone(UTC)
        except OverflowError:  # year 1 ahead of UTC, or year 9999 behind it
            raise BadInput("is out of range once in UTC") from None

    @field_validator("inputs")
    @classmethod
    def _no_blank_inputs(cls, inputs: list[str], info: ValidationInfo) -> list[str]:
        task = info.data.get("task")
        if task in TEXT_TASKS and task != "generate" and not inputs:
            raise BadInput(f"{task} jobs need at least one text")
        if task == "generate" and len(inputs) > MAX_PROMPTS:
            raise BadInput(
                f"generate jobs take at most {MAX_PROMPTS} prompts, not {len(inputs)};"
                " send the rest in another job"
            )
        if task == "transcribe" and inputs:
            raise BadInput("transcribe jobs take audio, not texts; leave inputs out")
        blank = [i for i, text in enumerate(inputs) if not text.strip()]
        if blank:
            raise BadInput(f"inputs {blank} are blank; every input needs some text")
        return inputs

    @field_validator("messages")
    @classmethod
    def _prompts_or_conversation(
        cls, messages: list[ChatTurn] | None, info: ValidationInfo
    ) -> list[ChatTurn] | None:
        task, inputs = info.data.get("task"), info.data.get("inputs")
        if task != "generate":
            if messages is not None:
                raise BadInput(f"{task} jobs take no messages; messages are for generate")
            return messages
        if messages is None:
            if inputs == []:
                raise BadInput(
                    "generate jobs need prompts in inputs, or a conversation in messages"
                )
            return messages
        if inputs:
            raise BadInput("a generate job takes prompts in inputs or messages, not both")
        if not messages or messages[-1].role != "user":
            raise BadInput("must end with the user's message, which is answered")
        return messages

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
            raise BadInput(f"unknown model {model!r} for task {task!r}; use one of: {known}")
        return model

    @field_validator("audio")
    @classmethod
    def _audio_size(cls, audio: str | None, info: ValidationInfo) -> str | None:
        task = info.data.get("task")
        if audio is None:
            if task == "transcribe":
                raise BadInput("transcribe jobs need the audio file, base64-encoded")
            return None
        if task in TEXT_TASKS:
            raise BadInput(f"{task} jobs take texts in inputs, not audio")
        size = len(decode_audio_field(audio))
        if size == 0:
            raise BadInput("audio is empty; send the bytes of a WAV, FLAC, MP3 or OGG file")
        if size > MAX_AUDIO_BYTES:
            raise BadInput(
                f"audio is {size} bytes, over the limit of {MAX_AUDIO_BYTES}; split the file"
            )
        return audio

    @field_validator("language")
    @classmethod
    def _language_fits_model(cls, language: str | None, info: ValidationInfo) -> str | None:
        if language not in (None, "en") and info.data.get("model") in ENGLISH_ONLY:
            raise BadInput(
                f"model {info.data['model']} transcribes English only; use en or leave it out"
            )
        return language

    def audio_bytes(self) -> bytes:
        """The decoded audio file (empty for text tasks)."""
        return b"" if self.audio is None else decode_audio_field(self.audio)


class Assignment(Message):
    """One replica of a job, sent by the router to one node."""

    assignment_id: UUID = Field(default_factory=uuid4)
    job_id: UUID
    node_id: NodeId
    task: Task
    model: str
    inputs: list[str] = Field(default_factory=list)
    audio: str | None = Field(default=None, description="16 kHz mono WAV, base64.")
    language: str | None = None
    top_k: int = DEFAULT_TOP_K
    messages: list[ChatTurn] | None = None
    """generate: the conversation to continue (inputs empty), else each input is a prompt."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    hw_class: HwClass
    deadline_at: datetime
    attempt: int = 1


class InferenceResult(Message):
    """What a node computed for one assignment (or the error it met)."""

    result_id: UUID = Field(default_factory=uuid4)
    assignment_id: UUID
    job_id: UUID
    node_id: NodeId
    task: Task = "embed"
    model: Name
    hw_class: HwClass
    precision: Precision
    embeddings: Annotated[list[Vector], Field(max_length=MAX_INPUTS)] | None = None
    classes: Annotated[list[Classification], Field(max_length=MAX_INPUTS)] | None = None
    transcript: Transcript | None = None
    generations: Annotated[list[Generation], Field(max_length=MAX_PROMPTS)] | None = None
    build: Name = Field(
        default="",
        description=(
            "The prepared variant that ran (e.g. int8-avx2): two builds of one precision"
            " may differ by more than one build does from itself."
        ),
    )
    error: ErrorText | None = None
    elapsed_ms: float = Field(default=0.0, ge=0)

    @field_validator("precision")
    @classmethod
    def _precision_of_its_class(cls, precision: str, info: ValidationInfo) -> str:
        # The guard weighs a result by its precision: it is the hardware class's (which
        # the ledger checks against the assignment's), never one of the node's choosing.
        hw_class = info.data.get("hw_class")
        if hw_class is not None and PRECISION[hw_class] != precision:
            raise BadInput(f"hardware class {hw_class} computes in {PRECISION[hw_class]}")
        return precision

    def output(self) -> Any:
        """The task's output as JSON data (None when the node reported an error)."""
        return _output_json(self, self.task)

    def precision_label(self) -> str:
        """What the guard's comparators weigh: the precision, and the build when it is
        not the precision's default one (int8/int8-avx2)."""
        return (
            self.precision
            if self.build in ("", self.precision)
            else (f"{self.precision}/{self.build}")
        )


class PartVerdict(Output):
    """How one part of a split job was decided, and by whom."""

    part: int
    job_id: UUID
    status: JobStatus
    reason: str = ""
    start_s: float | None = None
    """Audio parts: where the chunk starts in the original file."""
    end_s: float | None = None
    first_input: int | None = None
    """Text parts: index of the shard's first text in the job's inputs."""
    inputs: int | None = None
    agreeing: list[str] = Field(default_factory=list)
    disagreeing: list[str] = Field(default_factory=list)


ANONYMOUS = "anonymous"
"""The owner of jobs whose publisher is not known (jobs recorded before owners were)."""

Owner = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
    Field(description="The client that published the job: only it may read the verdict."),
]


class Verdict(Message):
    """The network's final word on a job."""

    job_id: UUID
    owner: Owner = ANONYMOUS
    status: JobStatus
    reason: str = ""
    task: Task = "embed"
    model: str = ""
    embeddings: list[Vector] | None = None
    classes: list[Classification] | None = None
    transcript: Transcript | None = None
    generations: list[Generation] | None = None
    canonical_result_id: UUID | None = None
    replicas: int = 0
    agreeing: list[str] = Field(default_factory=list)
    disagreeing: list[str] = Field(default_factory=list)
    timed_out: list[str] = Field(default_factory=list)
    parent_id: UUID | None = None
    """Set on the verdict of one part of a split job: the job it belongs to."""
    part: int | None = None
    parts: list[PartVerdict] = Field(default_factory=list)
    """Set on a split job's verdict: each part, in order, with the nodes that did it."""
    revision: int = 0
    """Raised when a later check re-validated the job: the latest revision stands."""

    def output(self) -> Any:
        """The task's output as JSON data (None unless verified)."""
        return _output_json(self, self.task)

    def with_output(self, output: Any) -> Verdict:
        """This verdict carrying `output` (JSON data) in its task's field."""
        return Verdict.model_validate(
            {**self.model_dump(mode="json"), OUTPUT_FIELD[self.task]: output}
        )


class NodeHeartbeat(Message):
    """A node's periodic announcement of what it serves and how busy it is."""

    node_id: NodeId
    hw_class: HwClass
    precision: Precision
    tasks: list[Task] = Field(max_length=len(TASKS))
    models: list[Name] = Field(max_length=MAX_MODELS)
    capacity: int = Field(
        ge=1, le=MAX_CAPACITY, description="Assignments it works on at once, prefetch included."
    )
    inflight: int = Field(ge=0, le=MAX_COUNT)
    processed: int = Field(ge=0, le=MAX_COUNT)
    status: Literal["up", "draining"] = "up"
    started_at: datetime


class JobReceipt(Message):
    """The network's word that it recorded a job: published by the router once the job is
    in the ledger, on the owner's receipt subject beside the verdict's. Its `created_at`
    is when the job was accepted; the verdict follows."""

    job_id: UUID
    owner: Owner = ANONYMOUS


MESSAGES: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (JobRequest, Assignment, InferenceResult, Verdict, NodeHeartbeat, JobReceipt)
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every message, keyed by file name."""
    return {
        f"{name}.schema.json": cls.model_json_schema(mode="validation")
        for name, cls in MESSAGES.items()
    }
