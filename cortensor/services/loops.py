"""Periodic work inside a service, stopped by an event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def every(
    seconds: float,
    step: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    on_error: Callable[[Exception], Any] | None = None,
) -> None:
    """Run `step` every `seconds` until `stop` is set; a failing step is logged, not
    fatal. `on_error` hears each failure first; when it returns a server's name (the
    failure was that server's outage, cortensor.services.outages.OutageLog.failed),
    the outage was logged once there, and each failed step only at debug level."""
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:
            name = getattr(step, "__name__", repr(step))
            server = on_error(exc) if on_error is not None else None
            if isinstance(server, str):
                log.debug("periodic step waits for a server", step=name, server=server)
            else:
                log.exception("periodic step failed", step=name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
