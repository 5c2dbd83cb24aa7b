"""Periodic work inside a service, stopped by an event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def every(seconds: float, step: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run `step` every `seconds` until `stop` is set; a failing step is logged, not fatal."""
    while not stop.is_set():
        try:
            await step()
        except Exception:
            log.exception("periodic step failed", step=getattr(step, "__name__", repr(step)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
