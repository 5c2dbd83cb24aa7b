"""One call to the gateway: who calls, the job its request makes, and the job's verdict.

Every task's route goes through here: the caller is known by its API key, the job is
built and checked by the schema itself (cortensor.schemas.JobRequest, whose messages
name the field to fix), submitted under the caller's name through the gateway's one
SDK connection, and its verdict either answers the call or becomes the refusal that
says why not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from fastapi import Request
from nats.errors import Error as NatsError
from pydantic import ValidationError

from cortensor.errors import BrokerUnavailable, CortensorError
from cortensor.gateway.errors import ApiError, bad_request, refusal, verdict_refusal
from cortensor.gateway.keys import ApiKeys
from cortensor.gateway.shapes import verification, verification_headers
from cortensor.schemas import JobReceipt, JobRequest, Verdict
from cortensor.settings import Settings


class Network(Protocol):
    """What the gateway asks of the network: cortensor.client.Client, on a gateway's
    login (which may submit and read for every owner)."""

    async def run(
        self, job: JobRequest, timeout_s: float | None = None, *, owner: str | None = None
    ) -> Verdict: ...

    async def result(self, job_id: UUID, *, owner: str | None = None) -> Verdict | None: ...

    async def receipt(self, job_id: UUID, *, owner: str | None = None) -> JobReceipt | None: ...

    async def find_owner(self, job_id: UUID) -> str | None: ...


@dataclass(frozen=True)
class Gateway:
    """What every call of one gateway process shares."""

    settings: Settings
    keys: ApiKeys
    network: Network


def gateway(request: Request) -> Gateway:
    """The gateway serving `request` (set up by the application's lifespan)."""
    found = request.app.state.gateway
    assert isinstance(found, Gateway), "the gateway's lifespan sets app.state.gateway"
    return found


_UNAUTHENTICATED = {"www-authenticate": "Bearer"}


def caller(request: Request) -> str:
    """The client calling: the owner its `Authorization: Bearer <key>` was issued to.
    401 without a key, or with one nobody holds."""
    authorization = request.headers.get("authorization", "")
    scheme, _, key = authorization.partition(" ")
    if not authorization:
        raise ApiError(
            401,
            "no API key: send `Authorization: Bearer <api_key>`, the api_key of the"
            " credentials `cortensor credentials issue client NAME` wrote",
            code="missing_api_key",
            headers=_UNAUTHENTICATED,
        )
    owner = gateway(request).keys.owner_of(key.strip()) if scheme.lower() == "bearer" else None
    if owner is None:
        raise ApiError(
            401,
            "invalid API key: not one this network issued, or revoked",
            code="invalid_api_key",
            headers=_UNAUTHENTICATED,
        )
    return owner


OPTION_HEADERS: dict[str, str] = {
    "redundancy": "x-cortensor-redundancy",
    "hw_class": "x-cortensor-hw-class",
    "deadline_s": "x-cortensor-deadline-s",
}
"""Job fields a caller may set on any call, as request headers (OpenAI's bodies have no
place for them; the `openai` package sends them with `extra_headers` or a client's
`default_headers`)."""


def options(request: Request) -> dict[str, Any]:
    """The job fields the request's `x-cortensor-*` headers set. Values are passed as
    typed as they can be read; the schema refuses the rest, naming the header."""
    found: dict[str, Any] = {}
    for name, header in OPTION_HEADERS.items():
        value = request.headers.get(header)
        if value is None:
            continue
        value = value.strip()
        if name == "redundancy" and value.isdigit():
            found[name] = int(value)
        elif name == "deadline_s":
            try:
                found[name] = float(value)
            except ValueError:
                found[name] = value
        else:
            found[name] = value
    return found


async def decide(
    gw: Gateway, owner: str, fields: dict[str, Any], params: Mapping[str, str]
) -> Verdict:
    """Run the job `fields` make for `owner` and return its verified verdict, or raise
    the refusal that answers the call: 400 naming the request's field (`params` maps the
    job's field names to the request's), 503 busy or unreachable, 504 no verdict in
    time, or the refusal of a verdict that is not `verified`."""
    params = {**OPTION_HEADERS, **params}
    try:
        job = JobRequest.model_validate(fields)
    except ValidationError as exc:
        raise bad_request(exc, params) from None
    wait_s = job.deadline_s + gw.settings.gateway_wait_s
    try:
        verdict = await gw.network.run(job, wait_s, owner=owner)
    except CortensorError as exc:
        error = refusal(exc)
        error.extra = {"cortensor": {"job_id": str(job.job_id)}}
        error.headers["x-cortensor-job-id"] = str(job.job_id)
        raise error from exc
    except (NatsError, TimeoutError, ConnectionError) as exc:
        raise refusal(BrokerUnavailable(f"NATS: {exc}")) from exc
    if verdict.status != "verified":
        error = verdict_refusal(verdict, params)
        error.extra = verification(verdict)
        error.headers.update(verification_headers(verdict))
        raise error
    return verdict


async def lookup(gw: Gateway, owner: str, job_id: UUID) -> Verdict | None:
    """The verdict on one of `owner`'s jobs; None while it is accepted and undecided.
    403 for another client's job, 404 for a job the network has no record of."""
    try:
        verdict = await gw.network.result(job_id, owner=owner)
        if verdict is not None:
            return verdict
        if await gw.network.receipt(job_id, owner=owner) is not None:
            return None
        someone = await gw.network.find_owner(job_id)
    except (NatsError, TimeoutError, ConnectionError) as exc:
        raise refusal(BrokerUnavailable(f"NATS: {exc}")) from exc
    if someone is not None:
        raise ApiError(
            403,
            f"job {job_id} is another client's: a client sees only its own jobs",
            type="permission_error",
            code="not_your_job",
        )
    raise ApiError(
        404,
        f"no job {job_id}: never submitted (or not recorded yet), or past the retention period",
        code="unknown_job",
    )
