"""The node's NATS side: one event loop on a background thread, shared by Celery's threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import structlog
from nats.aio.client import Client as NATS
from nats.errors import (
    ConnectionClosedError,
    ConnectionReconnectingError,
    NoRespondersError,
    OutboundBufferLimitError,
    TimeoutError,
)
from nats.js.errors import ServiceUnavailableError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from cortensor.adapters import jetstream
from cortensor.adapters.servers import reach
from cortensor.settings import Settings

T = TypeVar("T")
log = structlog.get_logger(__name__)

_TRANSIENT = (
    TimeoutError,
    NoRespondersError,
    ConnectionClosedError,
    asyncio.TimeoutError,
    # NATS away: the client buffers while it reconnects, and says so once it is full.
    ConnectionReconnectingError,
    OutboundBufferLimitError,
    # 503: JetStream cannot take it now, such as a results stream at its bound
    # ("maximum messages exceeded", discard new): it will once the guards catch up.
    ServiceUnavailableError,
)

Signed = tuple[bytes, Mapping[str, str]]
"""A payload and the headers that carry its signature."""


class NatsBridge:
    """Runs NATS I/O for synchronous callers (Celery task threads)."""

    def __init__(self, settings: Settings, *, name: str) -> None:
        self._settings, self._name = settings, name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats", daemon=True)
        self._nc: NATS | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        """Connect, waiting for NATS with back-off while it cannot be reached (one log
        line per try); a refused login raises its BadSetting."""
        self._thread.start()
        self._nc = asyncio.run_coroutine_threadsafe(
            reach("nats", lambda: jetstream.connect_as(self._settings, name=self._name)),
            self._loop,
        ).result()

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("NatsBridge.start() was not called")
        return self._nc

    def publish_durably(
        self, messages: Sequence[tuple[str, bytes, str, Mapping[str, str]]], *, within: float
    ) -> None:
        """Publish (subject, payload, msg id, headers) messages to JetStream together and
        block until the stream acked every one, retrying transient failures for up to
        `within` seconds; the msg ids make the retries idempotent."""

        async def attempt(
            subject: str, payload: bytes, msg_id: str, headers: Mapping[str, str]
        ) -> None:
            js = self.nc.jetstream()
            try:  # the common case, without the retry machinery's cost per message
                await jetstream.publish(js, subject, payload, msg_id=msg_id, headers=headers)
                return
            except _TRANSIENT as exc:
                log.warning("result publish failed; retrying", error=repr(exc))
            async for retry in AsyncRetrying(
                retry=retry_if_exception_type(_TRANSIENT),
                wait=wait_random_exponential(multiplier=0.05, max=2.0),
                stop=stop_after_delay(max(within, 1.0)),
                reraise=True,
            ):
                with retry:
                    await jetstream.publish(js, subject, payload, msg_id=msg_id, headers=headers)

        async def publish_all() -> None:
            await asyncio.gather(*(attempt(*message) for message in messages))

        self._run(publish_all(), timeout=max(within, 1.0) + 5.0)

    def start_heartbeats(self, subject: str, make: Callable[[], Signed], interval: float) -> None:
        """Publish `make()` (a signed heartbeat) on `subject` now and every `interval`
        seconds."""

        async def beat() -> None:
            while True:
                try:
                    payload, headers = make()
                    await self.nc.publish(subject, payload, headers=dict(headers))
                except Exception as exc:  # a missed heartbeat must not end the loop
                    log.warning("heartbeat failed", error=str(exc))
                await asyncio.sleep(interval)

        async def launch() -> None:
            self._heartbeat = asyncio.create_task(beat())

        self._run(launch(), timeout=5)

    def stop_heartbeats(self, last_words: tuple[str, Signed] | None = None) -> None:
        """Stop heartbeats and send a last message (a signed draining heartbeat)."""

        async def silence() -> None:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
            if last_words is not None and self._nc is not None and not self._nc.is_closed:
                subject, (payload, headers) = last_words
                await self._nc.publish(subject, payload, headers=dict(headers))
                await self._nc.flush()

        if self._thread.is_alive():
            self._run(silence(), timeout=5)

    def close(self) -> None:
        """Drain the connection and stop the loop thread."""

        async def drain() -> None:
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.drain()

        if self._thread.is_alive():
            try:
                self._run(drain(), timeout=10)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=5)
        if not self._thread.is_alive() and not self._loop.is_closed():
            self._loop.close()
