"""One route per task: embeddings, classifications, transcriptions and chat completions,
in OpenAI's shapes.

Each route turns its request into a job's fields, lets `calls.decide` run the job for
the caller, and shapes the verified verdict as OpenAI would answer, with the
verification beside it (body and headers).

A streamed chat completion (`stream: true`) streams the verified answer: the response
starts once the guards have decided, so that no token reaches the caller before enough
nodes agreed on it, and a refusal (busy, no agreement, no verdict in time) keeps its
HTTP status rather than arriving inside a stream that already said 200. The last chunk
carries the verification (docs/gateway.md).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Annotated, Any, get_args

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from cortensor.catalog import EMBEDDING_DIM
from cortensor.gateway.calls import Gateway, caller, decide, gateway, options
from cortensor.gateway.errors import ApiError
from cortensor.gateway.shapes import (
    ChatRequest,
    ClassificationsRequest,
    EmbeddingsRequest,
    TranscriptionFormat,
    chat_body,
    chat_chunks,
    classifications_body,
    embeddings_body,
    texts,
    transcription_body,
    verification_headers,
)
from cortensor.gateway.wire import json_response
from cortensor.schemas import MAX_AUDIO_BYTES

router = APIRouter(prefix="/v1")

Caller = Annotated[str, Depends(caller)]
Serving = Annotated[Gateway, Depends(gateway)]

TEXT_PARAMS = {"inputs": "input"}
CHAT_PARAMS = {"messages": "messages", "max_tokens": "max_tokens"}
"""Job fields -> the request fields that set them, for the text tasks."""
AUDIO_PARAMS = {"audio": "file"}
TRANSCRIBE_DEADLINE_S = 300.0
"""A transcription's deadline unless `x-cortensor-deadline-s` says otherwise: as
`cortensor submit transcribe`'s, since minutes of audio take more than a text's 30 s."""
MAX_FORM_FIELDS = 16
"""Form fields read from an upload: enough to name an unknown one rather than refuse
the form whole."""

TRANSCRIPTION_FIELDS = frozenset({"file", "model", "language", "response_format"})
"""The form fields a transcription takes; OpenAI's others (prompt, temperature, ...)
are refused by name rather than ignored."""


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingsRequest, request: Request, owner: Caller, gw: Serving
) -> Response:
    """OpenAI's embeddings: one vector per input text."""
    dim = EMBEDDING_DIM.get(body.model)
    if body.dimensions is not None and body.dimensions != dim:
        raise ApiError(
            400,
            f"dimensions: {body.model} embeds in {dim} dimensions only; leave it out",
            code="invalid_value",
            param="dimensions",
        )
    inputs = texts(body.input)
    fields = {"task": "embed", "model": body.model, "inputs": inputs, **options(request)}
    verdict = await decide(gw, owner, fields, TEXT_PARAMS)
    return json_response(
        embeddings_body(verdict, inputs, body.encoding_format), verification_headers(verdict)
    )


@router.post("/classifications")
async def classifications(
    body: ClassificationsRequest, request: Request, owner: Caller, gw: Serving
) -> Response:
    """The intent classifier: each input's best label, and its top classes with scores."""
    inputs = texts(body.input)
    fields: dict[str, Any] = {
        "task": "classify",
        "model": body.model,
        "inputs": inputs,
        "top_k": body.top_k,
        **options(request),
    }
    verdict = await decide(gw, owner, fields, TEXT_PARAMS)
    return json_response(classifications_body(verdict, inputs), verification_headers(verdict))


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name}: must be a form field, not a file", param=name)
    return value


@router.post("/audio/transcriptions")
async def transcriptions(request: Request, owner: Caller, gw: Serving) -> Response:
    """OpenAI's transcriptions: a multipart upload of `file` with `model`, and optionally
    `language` and `response_format` (json, text or verbose_json)."""
    async with request.form(max_files=1, max_fields=MAX_FORM_FIELDS) as form:
        unknown = sorted(set(form.keys()) - TRANSCRIPTION_FIELDS)
        if unknown:
            raise ApiError(
                400,
                f"{unknown[0]}: not supported by this network; send only"
                f" {', '.join(sorted(TRANSCRIPTION_FIELDS))}",
                param=unknown[0],
            )
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "file: upload the audio file as `file`", param="file")
        audio = await upload.read(MAX_AUDIO_BYTES + 1)
        if len(audio) > MAX_AUDIO_BYTES:
            raise ApiError(
                413,
                f"file: over the limit of {MAX_AUDIO_BYTES} bytes; split the audio",
                code="file_too_large",
                param="file",
            )
        model = _field(form, "model")
        language = _field(form, "language")
        response_format = _field(form, "response_format") or "json"
    if model is None:
        raise ApiError(400, "model: name the speech model (GET /v1/models)", param="model")
    formats: tuple[TranscriptionFormat, ...] = get_args(TranscriptionFormat)
    chosen = next((f for f in formats if f == response_format), None)
    if chosen is None:
        raise ApiError(
            400, f"response_format: one of {', '.join(formats)}", param="response_format"
        )
    fields: dict[str, Any] = {
        "task": "transcribe",
        "model": model,
        "audio": base64.b64encode(audio).decode(),
        "deadline_s": TRANSCRIBE_DEADLINE_S,
        **options(request),
    }
    if language:
        fields["language"] = language
    verdict = await decide(gw, owner, fields, AUDIO_PARAMS)
    headers = verification_headers(verdict)
    if chosen == "text":
        assert verdict.transcript is not None
        return PlainTextResponse(verdict.transcript.text, headers=headers)
    return json_response(transcription_body(verdict, chosen), headers)


GREEDY = {"temperature": (None, 0.0), "top_p": (None, 1.0), "n": (None, 1)}
"""The sampling fields a chat request may send, at the values that keep decoding greedy."""


@router.post("/chat/completions")
async def chat_completions(
    body: ChatRequest, request: Request, owner: Caller, gw: Serving
) -> Response:
    """OpenAI's chat completions, decoded greedily, streamed (`stream: true`) or not."""
    for name, allowed in GREEDY.items():
        if getattr(body, name) not in allowed:
            raise ApiError(
                400,
                f"{name}: this network decodes greedily, so that replicas can be compared"
                f" token for token; leave it out (or send {allowed[1]})",
                code="invalid_value",
                param=name,
            )
    turns = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    fields: dict[str, Any] = {
        "task": "generate",
        "model": body.model,
        "messages": turns,
        **options(request),
    }
    if body.tokens() is not None:
        fields["max_tokens"] = body.tokens()
    verdict = await decide(gw, owner, fields, CHAT_PARAMS)
    created = int(time.time())
    contents = [turn["content"] for turn in turns]
    headers = verification_headers(verdict)
    if not body.stream:
        return json_response(chat_body(verdict, contents, created), headers)
    usage = body.stream_options is not None and body.stream_options.include_usage
    chunks = chat_chunks(verdict, contents, created, include_usage=usage)
    return StreamingResponse(_events(chunks), media_type="text/event-stream", headers=headers)


def _events(chunks: list[dict[str, Any]]) -> Iterator[bytes]:
    """Server-sent events, one per chunk, closed by OpenAI's `[DONE]`."""
    for chunk in chunks:
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    yield b"data: [DONE]\n\n"
