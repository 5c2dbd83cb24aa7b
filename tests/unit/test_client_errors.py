"""What the SDK publishes again through an outage, and what it raises at once."""

from __future__ import annotations

import asyncio

import pytest
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ConnectionClosed,
    DeliveryError,
)
from pamqp.commands import Basic

from cortensor.client import Client, _may_pass, _refusal
from cortensor.errors import BadInput, BadSetting, Busy, CortensorError, SetupIncomplete
from cortensor.schemas import JobRequest
from cortensor.settings import Settings

SETTINGS = Settings(credentials=None, principal="alice")


@pytest.mark.parametrize(
    "exc",
    [
        ChannelInvalidStateError("No active transport in channel"),
        ConnectionClosed(320, "CONNECTION_FORCED - broker shutdown"),
        AMQPConnectionError("connect call failed"),
        ConnectionResetError(),
        TimeoutError(),
        RuntimeError("Writer is None"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_broker_that_went_away_is_tried_again(exc: BaseException) -> None:
    assert _may_pass(exc)


@pytest.mark.parametrize(
    ("exc", "raised", "says"),
    [
        (DeliveryError(None, Basic.Nack(delivery_tag=1)), Busy, "the network is busy"),
        (ChannelAccessRefused("ACCESS_REFUSED"), BadSetting, "refused to let alice publish"),
        (ChannelNotFoundEntity("NOT_FOUND"), SetupIncomplete, "cortensor brokers setup"),
        (ChannelPreconditionFailed("message size 300 is larger"), BadInput, "refused the job"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "",
)
def test_a_refusal_is_raised_at_once_with_what_to_do(
    exc: BaseException, raised: type[CortensorError], says: str
) -> None:
    assert not _may_pass(exc)
    refusal = _refusal(exc, SETTINGS, "ns.submit", "job.alice")
    assert isinstance(refusal, raised)
    assert says in str(refusal)


def test_a_client_not_entered_says_so_rather_than_retrying() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        asyncio.run(Client(SETTINGS).submit(JobRequest(inputs=["x"]), timeout_s=600))
