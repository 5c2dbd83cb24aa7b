"""Every refusal the gateway answers with, in OpenAI's error shape and HTTP status.

`{"error": {"message", "type", "param", "code"}}`: the `openai` package raises the
matching exception (BadRequestError for 400, AuthenticationError for 401, ...) with
these fields. What an SDK error means for a caller is one table (`REFUSALS`), looked up
along the error's class hierarchy like cortensor.errors' own tables; a verdict that is
not `verified` is turned into a refusal by `verdict_refusal`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from cortensor.client import VerdictTimeout
from cortensor.errors import (
    BadInput,
    BadSetting,
    BrokerUnavailable,
    Busy,
    CortensorError,
    RetryableError,
    SetupIncomplete,
)
from cortensor.schemas import Verdict, printable

RETRY_AFTER_S = 1
"""What a busy answer tells the caller to wait (Retry-After), in whole seconds: the SDK
itself holds back a quarter of a second after the network said busy."""


@dataclass
class ApiError(Exception):
    """An answer other than success: its status and the fields of OpenAI's error shape,
    and extra body fields (the job's verification) and headers to send with it."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """The JSON body: OpenAI's error object, then the extra fields."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}, **self.extra}


@dataclass(frozen=True, slots=True)
class Refusal:
    """How an SDK error is answered."""

    status: int
    type: str
    code: str


REFUSALS: dict[type[BaseException], Refusal] = {
    # The gateway's own login was refused (issued for a client, revoked): its operator's
    # problem, not the caller's, though BadSetting is a kind of BadInput.
    BadSetting: Refusal(500, "server_error", "gateway_misconfigured"),
    BadInput: Refusal(400, "invalid_request_error", "invalid_value"),
    Busy: Refusal(503, "server_error", "network_busy"),
    VerdictTimeout: Refusal(504, "timeout_error", "no_verdict"),
    BrokerUnavailable: Refusal(503, "server_error", "broker_unavailable"),
    RetryableError: Refusal(503, "server_error", "try_again"),
    SetupIncomplete: Refusal(500, "server_error", "setup_incomplete"),
    CortensorError: Refusal(500, "server_error", "internal_error"),
}
"""SDK error class -> the answer (the nearest class wins)."""


def refusal(exc: CortensorError) -> ApiError:
    """The answer to a call that the SDK ended with `exc`."""
    row = next(REFUSALS[c] for c in type(exc).__mro__ if c in REFUSALS)
    headers = {"retry-after": str(RETRY_AFTER_S)} if row.status == 503 else {}
    return ApiError(row.status, str(exc), type=row.type, code=row.code, headers=headers)


def _param(location: str, params: Mapping[str, str]) -> str:
    """The request's name for a job field (`inputs` -> `input`), kept with its index."""
    head, dot, rest = location.partition(".")
    return f"{params.get(head, head)}{dot}{rest}"


def bad_request(exc: ValidationError, params: Mapping[str, str]) -> ApiError:
    """400 for a job the schema refused: each problem in the schema's own words, each
    naming the request's field to fix (`params` maps the job's field names to the
    request's); `param` is the first."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(printable(str(p), 40) for p in error["loc"]) or "body"
        message = printable(error["msg"].removeprefix("Value error, "), 200)
        problems.append((_param(where, params), message))
    message = "; ".join(f"{where}: {what}" for where, what in problems)
    first = problems[0][0].split(".")[0] if problems else None
    return ApiError(400, message, code="invalid_value", param=first)


_REASON_FIELD = re.compile(r"^([A-Za-z_]+)(?:\.[^:\s]*)?: ")
"""The field a rejected verdict's reason names first (`inputs.1: holds ...`)."""


def verdict_refusal(verdict: Verdict, params: Mapping[str, str]) -> ApiError:
    """The answer for a verdict that is not `verified`: `rejected` is the caller's input
    (400, naming the field), `failed` no node did it before the deadline (504),
    `inconclusive` the nodes did not agree (502)."""
    match verdict.status:
        case "rejected":
            found = _REASON_FIELD.match(verdict.reason)
            if found is None:
                return ApiError(400, verdict.reason, code="rejected")
            named = found.group(1)
            param = params.get(named, named)
            message = param + verdict.reason[len(named) :]
            return ApiError(400, message, code="rejected", param=param)
        case "failed":
            return ApiError(504, verdict.reason, type="timeout_error", code="job_failed")
        case _:
            return ApiError(502, verdict.reason, type="server_error", code=verdict.status)
