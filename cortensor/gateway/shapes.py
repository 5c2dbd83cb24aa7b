"""The gateway's request and response bodies, in OpenAI's shapes where OpenAI has one.

Requests accept what OpenAI's API accepts for the same call and refuse what this network
cannot honour (a field it does not know, `dimensions` other than the model's) by name.
Responses carry OpenAI's fields and, beside them, a `cortensor` object that says how the
answer was verified; `verification_headers` says the same in `x-cortensor-*` headers
for callers that read only headers (a `text` transcription has no JSON to carry it).
"""

from __future__ import annotations

import base64
import re
from typing import Any, Literal
from uuid import UUID

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cortensor.catalog import MODELS, Task
from cortensor.schemas import MAX_TOP_K, Classification, Generation, JobStatus, Verdict


class Request(BaseModel):
    """A request body: unknown fields are refused, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddingsRequest(Request):
    """POST /v1/embeddings, as OpenAI's."""

    input: str | list[str]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    """Accepted for OpenAI's clients; the gateway knows the caller by its key."""


class ClassificationsRequest(Request):
    """POST /v1/classifications: texts in, classes with scores out."""

    input: str | list[str]
    model: str
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K, strict=True)
    user: str | None = None


TranscriptionFormat = Literal["json", "text", "verbose_json"]


class TextPart(Request):
    """One part of a message's content, as OpenAI's clients send it: text only here."""

    type: Literal["text"]
    text: str


class ChatMessage(Request):
    """One message of OpenAI's chat. `developer` is OpenAI's newer name for `system`."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        """The content as one text (parts joined as they come)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(Request):
    """OpenAI's `stream_options`."""

    include_usage: bool = False


class ChatRequest(Request):
    """POST /v1/chat/completions, as OpenAI's, for greedy decoding: `temperature` and
    `top_p` may be sent only at the values that leave decoding greedy, and `n` only 1, so
    that a request never silently gets something other than it asked for."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    user: str | None = None

    def tokens(self) -> int | None:
        """The most new tokens asked, by either of OpenAI's names."""
        return self.max_completion_tokens if self.max_tokens is None else self.max_tokens


class Verification(BaseModel):
    """How an answer was verified: the job it ran as, how it ended, on how many nodes,
    which agreed with the answer given, and the verdict's revision (raised when a later
    check re-validated it)."""

    job_id: UUID
    status: JobStatus
    replicas: int
    agreeing: list[str]
    disagreeing: list[str]
    revision: int
    reason: str
    parts: int
    """How many parts the network split the job into (0: it ran whole)."""

    @classmethod
    def of(cls, verdict: Verdict) -> Verification:
        return cls(
            job_id=verdict.job_id,
            status=verdict.status,
            replicas=verdict.replicas,
            agreeing=verdict.agreeing,
            disagreeing=verdict.disagreeing,
            revision=verdict.revision,
            reason=verdict.reason,
            parts=len(verdict.parts),
        )


def verification_headers(verdict: Verdict) -> dict[str, str]:
    """The verification as `x-cortensor-*` headers (node ids are header-safe tokens)."""
    return {
        "x-cortensor-job-id": str(verdict.job_id),
        "x-cortensor-status": verdict.status,
        "x-cortensor-replicas": str(verdict.replicas),
        "x-cortensor-agreeing": ",".join(verdict.agreeing),
        "x-cortensor-revision": str(verdict.revision),
    }


def verification(verdict: Verdict) -> dict[str, Any]:
    """The `cortensor` field of a response body."""
    return {"cortensor": Verification.of(verdict).model_dump(mode="json")}


def texts(value: str | list[str]) -> list[str]:
    """OpenAI's `input`: one text or a list of them."""
    return [value] if isinstance(value, str) else value


def usage(inputs: list[str]) -> dict[str, int]:
    """OpenAI's `usage`. The gateway runs no tokenizer: it counts the texts' words
    (whitespace-separated), which is what it can say without loading the model."""
    words = sum(len(text.split()) for text in inputs)
    return {"prompt_tokens": words, "total_tokens": words}


def _embedding(vector: list[float], encoding: Literal["float", "base64"]) -> list[float] | str:
    if encoding == "float":
        return vector
    # OpenAI's base64: the vector's little-endian float32 bytes.
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def embeddings_body(
    verdict: Verdict, inputs: list[str], encoding: Literal["float", "base64"]
) -> dict[str, Any]:
    """OpenAI's embeddings response for a verified verdict."""
    data = [
        {"object": "embedding", "index": i, "embedding": _embedding(vector, encoding)}
        for i, vector in enumerate(verdict.embeddings or [])
    ]
    return {
        "object": "list",
        "data": data,
        "model": verdict.model,
        "usage": usage(inputs),
        **verification(verdict),
    }


def _classification(index: int, c: Classification) -> dict[str, Any]:
    return {
        "object": "classification",
        "index": index,
        "label": c.label,
        "score": c.score,
        "classes": [{"label": t.label, "score": t.score} for t in c.top],
    }


def classifications_body(verdict: Verdict, inputs: list[str]) -> dict[str, Any]:
    """The classifications response, in the embeddings' style: one entry per input with
    its best label and the top classes with their scores."""
    data = [_classification(i, c) for i, c in enumerate(verdict.classes or [])]
    return {
        "object": "list",
        "data": data,
        "model": verdict.model,
        "usage": usage(inputs),
        **verification(verdict),
    }


def transcription_body(verdict: Verdict, response_format: TranscriptionFormat) -> dict[str, Any]:
    """OpenAI's transcription response (json or verbose_json) for a verified verdict."""
    transcript = verdict.transcript
    assert transcript is not None, "a verified transcribe verdict holds its transcript"
    if response_format == "json":
        return {"text": transcript.text, **verification(verdict)}
    segments = [
        {"id": i, "start": s.start, "end": s.end, "text": s.text}
        for i, s in enumerate(transcript.segments)
    ]
    return {
        "task": "transcribe",
        "language": transcript.language,
        "duration": transcript.duration_s,
        "text": transcript.text,
        "segments": segments,
        **verification(verdict),
    }


def completion_id(verdict: Verdict) -> str:
    """A chat completion's id: its job's, so that GET /v1/jobs/{id} finds the verdict."""
    return f"chatcmpl-{verdict.job_id}"


def _answer(verdict: Verdict) -> Generation:
    answers = verdict.generations or []
    assert len(answers) == 1, "a verified chat verdict holds one answer"
    return answers[0]


def chat_usage(messages: list[str], answer: Generation) -> dict[str, int]:
    """OpenAI's `usage`: the answer's tokens exactly, the prompt's counted in words (the
    gateway runs no tokenizer)."""
    prompt = usage(messages)["prompt_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": len(answer.tokens),
        "total_tokens": prompt + len(answer.tokens),
    }


def chat_body(verdict: Verdict, messages: list[str], created: int) -> dict[str, Any]:
    """OpenAI's chat completion for a verified verdict."""
    answer = _answer(verdict)
    return {
        "id": completion_id(verdict),
        "object": "chat.completion",
        "created": created,
        "model": verdict.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": chat_usage(messages, answer),
        **verification(verdict),
    }


_PIECES = re.compile(r"\s*\S+|\s+$")
"""A word with the spaces before it; trailing spaces alone. The pieces join to the text."""


def chat_chunks(
    verdict: Verdict, messages: list[str], created: int, *, include_usage: bool
) -> list[dict[str, Any]]:
    """The chunks of a streamed chat completion of a verified answer: the role, the text
    word by word, then the end with the verification (and usage when asked)."""
    answer = _answer(verdict)
    head = {
        "id": completion_id(verdict),
        "object": "chat.completion.chunk",
        "created": created,
        "model": verdict.model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in _PIECES.findall(answer.text)]
    chunks.append({**chunk({}, answer.finish_reason), **verification(verdict)})
    if include_usage:
        chunks.append({**head, "choices": [], "usage": chat_usage(messages, answer)})
    return chunks


def models_body() -> dict[str, Any]:
    """OpenAI's model list: every model the network serves (cortensor.catalog)."""
    return {"object": "list", "data": [model_body(m) for names in MODELS.values() for m in names]}


def model_body(model: str) -> dict[str, Any]:
    """One model, as OpenAI lists it, with the task it serves. The catalog keeps no
    dates: `created` is 0."""
    task: Task = next(t for t, names in MODELS.items() if model in names)
    return {
        "id": model,
        "object": "model",
        "created": 0,
        "owned_by": "cortensor",
        "cortensor": {"task": task},
    }


def job_body(job_id: UUID, verdict: Verdict | None) -> dict[str, Any]:
    """GET /v1/jobs/{id}: the job's status and its verdict, or `pending` when the network
    accepted it and has not decided it yet."""
    if verdict is None:
        return {"object": "job", "id": str(job_id), "status": "pending", "verdict": None}
    return {
        "object": "job",
        "id": str(job_id),
        "status": verdict.status,
        "verdict": verdict.model_dump(mode="json"),
        **verification(verdict),
    }
