"""The gateway's application: the network behind OpenAI-shaped HTTP endpoints.

    POST /v1/embeddings            OpenAI's embeddings
    POST /v1/classifications       the intent classifier, in the same style
    POST /v1/audio/transcriptions  OpenAI's transcriptions (multipart upload)
    GET  /v1/models[/{model}]      the models the network serves
    GET  /v1/jobs/{id}             one of the caller's jobs: its status and verdict
    GET  /health                   whether the gateway is up (no key needed)
    GET  /metrics                  Prometheus metrics (no key needed; no user content)

A gateway process holds one SDK connection (cortensor.client.Client), opened in the
application's lifespan on the gateway's own login: it submits each caller's jobs under
the caller's name and reads the caller's verdicts, which only a gateway's permissions
allow for every owner (cortensor.adapters.principals.grants).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated
from uuid import UUID

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from cortensor import metrics
from cortensor.catalog import TASK_OF
from cortensor.client import Client
from cortensor.errors import BadSetting
from cortensor.gateway import tasks
from cortensor.gateway.calls import Gateway, Network, caller, gateway, lookup
from cortensor.gateway.errors import ApiError
from cortensor.gateway.keys import ApiKeys, api_keys_path
from cortensor.gateway.shapes import job_body, model_body, models_body, verification_headers
from cortensor.gateway.wire import BodyLimit, Observed, error_response, json_response
from cortensor.settings import Settings

log = structlog.get_logger("cortensor.gateway")

Connect = Callable[[Settings], AbstractAsyncContextManager[Network]]
"""How the gateway opens its connection to the network (the SDK's Client)."""

Caller = Annotated[str, Depends(caller)]
Serving = Annotated[Gateway, Depends(gateway)]

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
}


def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


def _invalid(request: Request, exc: Exception) -> Response:
    """A body FastAPI could not read as the route's request: 400, naming the field."""
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"][1:]) or "body"
        problems.append((where, error["msg"].removeprefix("Value error, ")))
    first = problems[0][0].split(".")[0] if problems else None
    message = "; ".join(f"{where}: {what}" for where, what in problems) or "invalid request"
    return error_response(ApiError(400, message, code="invalid_value", param=first))


def _http(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method, a body too large)."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "invalid_request")
    error = ApiError(exc.status_code, str(exc.detail), code=code)
    error.headers.update(exc.headers or {})
    return error_response(error)


def _crashed(request: Request, exc: Exception) -> Response:
    log.error("gateway call failed", path=request.url.path, exc_info=exc)
    return error_response(
        ApiError(500, "the gateway failed; see its log", type="server_error", code="internal_error")
    )


def create_app(
    settings: Settings, *, connect: Connect = Client, keys: ApiKeys | None = None
) -> FastAPI:
    """The gateway's application on `settings` (a gateway's credentials): its lifespan
    opens the one network connection the calls share."""
    if settings.principal_kind != "gateway":
        raise BadSetting(
            "the gateway runs on a gateway's credentials (`cortensor credentials issue"
            f" gateway NAME`), not on {settings.principal_kind or 'none'}: a client's may"
            " submit only its own jobs"
        )
    registry = keys or ApiKeys(api_keys_path(settings.state_dir), settings.namespace)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not registry.path.exists():
            log.warning("no API keys yet: every call is refused 401", path=str(registry.path))
        async with connect(settings) as network:
            app.state.gateway = Gateway(settings, registry, network)
            yield

    app = FastAPI(
        title="Cortensor gateway",
        summary="Verified inference on a network of untrusted nodes, in OpenAI's shapes.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit)
    app.add_middleware(Observed)  # added last, so outermost: it sees every answer
    app.add_exception_handler(ApiError, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _crashed)
    app.include_router(tasks.router)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Whether the gateway is up; no key needed."""
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        """Prometheus metrics of this process (the calls it answered, by route)."""
        return Response(metrics.metrics_text(), media_type=metrics.CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(owner: Caller) -> Response:
        """The models the network serves, as OpenAI lists them."""
        return json_response(models_body(), {})

    @app.get("/v1/models/{model}")
    async def model(model: str, owner: Caller) -> Response:
        """One model the network serves."""
        if model not in TASK_OF:
            raise ApiError(404, f"no model {model!r}: GET /v1/models", code="model_not_found")
        return json_response(model_body(model), {})

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: UUID, owner: Caller, gw: Serving) -> Response:
        """One of the caller's jobs: its verdict, or `pending` while it is undecided."""
        verdict = await lookup(gw, owner, job_id)
        pending = {"x-cortensor-job-id": str(job_id), "x-cortensor-status": "pending"}
        headers = pending if verdict is None else verification_headers(verdict)
        return json_response(job_body(job_id, verdict), headers)

    return app


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run the gateway with uvicorn until SIGINT or SIGTERM, logging through the
    process's logging (the command line configured it: console or JSON lines)."""
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        log_level=settings.log_level.lower(),
        # Clients' keys travel in headers, which uvicorn never logs; its access log
        # names the path and status of each call.
        access_log=True,
    )
