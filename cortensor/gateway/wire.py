"""What goes over HTTP below the routes: JSON responses, the bound on request bodies,
and the count of calls answered (cortensor.metrics, served at /metrics).

A body past the bound is answered 413 in OpenAI's error shape before a route reads it.
Its bytes are still read (and dropped) up to `DRAIN_BYTES`, so that a client which sends
its whole body before it reads the answer (as HTTP clients do) gets the 413 rather than
a connection reset; past that the connection is closed on it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import HTTPException
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cortensor import metrics
from cortensor.gateway.errors import ApiError
from cortensor.schemas import MAX_JOB_BYTES

MAX_BODY_BYTES = MAX_JOB_BYTES
"""The largest request body: a job's own limit (an upload's file has its own, smaller
one: cortensor.schemas.MAX_AUDIO_BYTES)."""
DRAIN_BYTES = 8 * MAX_BODY_BYTES
"""How much of a body past the bound is read and dropped before the 413."""


def json_response(body: dict[str, Any], headers: dict[str, str], status: int = 200) -> Response:
    """A JSON response (orjson: a response of many vectors is mostly floats)."""
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )


def error_response(error: ApiError) -> Response:
    """The response that carries a refusal."""
    return json_response(error.body(), error.headers, error.status)


def _too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes"


class BodyLimit:
    """ASGI middleware: request bodies of at most `limit` bytes, by their declared length
    and by what arrives (a chunked body declares none: reading past the bound raises the
    413 in the route that reads it)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            if int(declared) <= DRAIN_BYTES:
                await _drain(receive, DRAIN_BYTES)
            too_large = ApiError(413, _too_large(self.limit), code="request_too_large")
            await error_response(too_large)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # What FastAPI passes on from reading a body (other errors it
                    # answers 400); the application's handler answers it 413.
                    raise HTTPException(413, _too_large(self.limit))
            return message

        await self.app(scope, counted, send)


async def _drain(receive: Receive, at_most: int) -> None:
    """Read and drop what is left of a request body, up to `at_most` bytes."""
    left = at_most
    while left > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        left -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class Observed:
    """ASGI middleware: each call answered counted by its route's template (bounded
    labels: never a job id) and status, with the seconds it took."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.gateway_answered(route, status, time.monotonic() - started)
