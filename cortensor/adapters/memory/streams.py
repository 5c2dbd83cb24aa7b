"""An in-memory NATS for tests: core publish/subscribe, JetStream streams with dedupe by
message id, and durable pull consumers with explicit acks and redelivery.

`MemoryNats` plays the server; `MemorySignals`, `MemoryStreamPublisher` and
`MemoryPullConsumer` are the twins of `jetstream.NatsSignals`, `JetStreamPublisher`
and `PullConsumer`. What it keeps of NATS's semantics (tests/contract/ checks each
against the real server):

- subjects match with `*` (one token) and `>` (the rest);
- a message on a stream's subject is stored, core published or not; a JetStream publish
  with a `Nats-Msg-Id` seen within the stream's duplicate window is acked and dropped;
  a JetStream publish that no stream takes raises `NoStream`;
- a durable consumer delivers each stored message to one fetcher; a message not acked
  within `ack_wait`, or nak'ed (after its delay), is delivered again; `term` and `ack`
  end it; `in_progress` restarts its ack wait; no more than `max_ack_pending` are out
  unacked at once; the consumer tells when its oldest untaken message was stored (wall
  clock, as the server stamps messages);
- core subscribers get what is published while they listen, nothing before;
- headers travel with a message, stored or not (a JetStream publish's `Nats-Msg-Id`
  among them, as the real server keeps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cortensor.adapters.interfaces import SignalHandler, StreamMessage
from cortensor.adapters.topology import StreamSpec, Topology
from cortensor.errors import CortensorError
from cortensor.schemas import utcnow

MSG_ID_HEADER = "Nats-Msg-Id"
"""The header of a JetStream publish's message id (as `jetstream.MSG_ID_HEADER`: the
twin may not import the adapter it stands for)."""


class NoStream(CortensorError):
    """A JetStream publish to a subject that no stream holds."""


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether `subject` matches `pattern` (`*` one token, `>` one or more at the end)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


@dataclass(frozen=True, slots=True)
class _Stored:
    seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str] | None = None
    stored_at: datetime = field(default_factory=utcnow)


@dataclass(slots=True)
class _Stream:
    name: str
    subjects: tuple[str, ...]
    duplicate_window_s: float
    messages: dict[int, _Stored] = field(default_factory=dict)
    last_seq: int = 0
    seen_ids: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Durable:
    stream: _Stream
    ack_wait_s: float
    max_ack_pending: int
    next_seq: int = 1
    out: dict[int, float] = field(default_factory=dict)
    """Delivered and unacked: sequence -> when it is due again."""
    deliveries: dict[int, int] = field(default_factory=dict)


class MemoryStreamMessage:
    """A fetched message (a `StreamMessage`), settled on its durable consumer."""

    def __init__(self, nats: MemoryNats, durable: _Durable, stored: _Stored) -> None:
        self._nats, self._durable, self._stored = nats, durable, stored

    @property
    def subject(self) -> str:
        """Where it was published."""
        return self._stored.subject

    @property
    def data(self) -> bytes:
        """The payload."""
        return self._stored.data

    @property
    def headers(self) -> Mapping[str, str] | None:
        """The headers it was published with."""
        return self._stored.headers

    @property
    def num_delivered(self) -> int:
        """How often the consumer has delivered this message, this time included."""
        return self._durable.deliveries.get(self._stored.seq, 0)

    async def ack(self) -> None:
        """Done: never delivered again."""
        self._durable.out.pop(self._stored.seq, None)
        self._durable.deliveries.pop(self._stored.seq, None)
        self._nats.changed()

    async def nak(self, delay: float | None = None) -> None:
        """Deliver again, at once or after `delay` seconds."""
        if self._stored.seq in self._durable.out:
            self._durable.out[self._stored.seq] = self._nats.clock() + (delay or 0.0)
            self._nats.changed()

    async def term(self) -> None:
        """Never deliver again."""
        await self.ack()

    async def in_progress(self) -> None:
        """Still being worked on: due again a whole ack wait from now."""
        if self._stored.seq in self._durable.out:
            self._durable.out[self._stored.seq] = self._nats.clock() + self._durable.ack_wait_s


class MemoryNats:
    """The server side: streams, durable consumers and core subscriptions."""

    def __init__(
        self, topology: Topology | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.streams: dict[str, _Stream] = {}
        self.durables: dict[str, _Durable] = {}
        self.subscriptions: list[MemorySubscription] = []
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        if topology is not None:
            for spec in topology.streams:
                self.add_stream(spec)
            c = topology.guard_consumer
            self.add_consumer(
                c.stream, c.durable, ack_wait_s=c.ack_wait_s, max_ack_pending=c.max_ack_pending
            )

    def add_stream(self, spec: StreamSpec) -> None:
        """A stream over its subjects (idempotent)."""
        self.streams.setdefault(
            spec.name, _Stream(spec.name, tuple(spec.subjects), spec.duplicate_window_s)
        )

    def add_consumer(
        self, stream: str, durable: str, *, ack_wait_s: float, max_ack_pending: int = 1000
    ) -> None:
        """A durable pull consumer delivering the whole stream (idempotent)."""
        self.durables.setdefault(
            durable, _Durable(self.streams[stream], ack_wait_s, max_ack_pending)
        )

    def changed(self) -> None:
        """Wake the fetchers: something may be ready for them."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _store(
        self, subject: str, data: bytes, msg_id: str | None, headers: Mapping[str, str] | None
    ) -> bool:
        stored = False
        now = self.clock()
        for stream in self.streams.values():
            if not any(subject_matches(p, subject) for p in stream.subjects):
                continue
            stored = True
            if msg_id is not None:
                seen = stream.seen_ids.get(msg_id)
                if seen is not None and now - seen < stream.duplicate_window_s:
                    continue
                stream.seen_ids[msg_id] = now
            stream.last_seq += 1
            stream.messages[stream.last_seq] = _Stored(stream.last_seq, subject, data, headers)
        if stored:
            self.changed()
        return stored

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """A JetStream publish: stored (or dropped as a duplicate) and acked; raises
        `NoStream` when no stream takes the subject."""
        if msg_id is not None:
            headers = {**(headers or {}), MSG_ID_HEADER: msg_id}
        if not self._store(subject, data, msg_id, headers):
            raise NoStream(f"no stream takes subject {subject!r}")
        await asyncio.sleep(0)

    async def publish_core(
        self, subject: str, data: bytes, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """A core publish: to current subscribers, and stored by any stream on it."""
        self._store(subject, data, None, headers)
        for sub in list(self.subscriptions):
            if subject_matches(sub.subject, subject):
                task = asyncio.get_running_loop().create_task(
                    sub.deliver(_Stored(0, subject, data, headers))
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        await asyncio.sleep(0)

    def stored(self, stream: str) -> list[tuple[str, bytes]]:
        """What a stream holds, (subject, data) in order."""
        return [(m.subject, m.data) for m in self.streams[stream].messages.values()]

    def take(self, durable: str, batch: int) -> list[MemoryStreamMessage]:
        """Up to `batch` messages ready on a durable consumer now: due redeliveries
        first, then new ones while fewer than max_ack_pending are out."""
        d = self.durables[durable]
        now = self.clock()
        seqs = sorted(seq for seq, due in d.out.items() if due <= now)[:batch]
        while (
            len(seqs) < batch and d.next_seq <= d.stream.last_seq and len(d.out) < d.max_ack_pending
        ):
            if d.next_seq in d.stream.messages:
                seqs.append(d.next_seq)
                d.out[d.next_seq] = 0.0
            d.next_seq += 1
        for seq in seqs:
            d.out[seq] = now + d.ack_wait_s
            d.deliveries[seq] = d.deliveries.get(seq, 0) + 1
        return [MemoryStreamMessage(self, d, d.stream.messages[seq]) for seq in seqs]

    def backlog(self, durable: str) -> int:
        """Messages a durable consumer has not had acked yet: out unacked or never sent."""
        d = self.durables[durable]
        return len(d.out) + sum(1 for seq in d.stream.messages if seq >= d.next_seq)

    def oldest_untaken(self, durable: str) -> datetime | None:
        """When the oldest message a durable consumer has not had acked or termed was
        stored: one out unacked, or one not delivered yet."""
        d = self.durables[durable]
        untaken = [
            m.stored_at for seq, m in d.stream.messages.items() if seq in d.out or seq >= d.next_seq
        ]
        return min(untaken, default=None)

    def next_due(self, durable: str) -> float | None:
        """When the next unacked message of a durable consumer is due again."""
        return min(self.durables[durable].out.values(), default=None)

    async def wait_change(self, until: float) -> None:
        """Wait until something changes or the clock reaches `until`."""
        event = self._changed
        left = until - self.clock()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=left)


class MemorySubscription:
    """A core subscription: delivers in order, one message at a time, as nats-py does."""

    def __init__(self, nats: MemoryNats, subject: str, handler: SignalHandler) -> None:
        self.nats, self.subject, self.handler = nats, subject, handler
        self._lock = asyncio.Lock()
        self.active = True

    async def deliver(self, message: _Stored) -> None:
        """Call the handler (unless unsubscribed meanwhile)."""
        async with self._lock:
            if self.active:
                await self.handler(message)

    async def unsubscribe(self) -> None:
        """Stop receiving."""
        self.active = False
        if self in self.nats.subscriptions:
            self.nats.subscriptions.remove(self)


class MemorySignals:
    """Twin of `jetstream.NatsSignals`: a `SignalBus` on a `MemoryNats`."""

    def __init__(self, nats: MemoryNats) -> None:
        self.nats = nats

    async def publish(
        self, subject: str, payload: bytes, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send to current subscribers."""
        await self.nats.publish_core(subject, payload, headers=headers)

    async def subscribe(self, subject: str, handler: SignalHandler) -> MemorySubscription:
        """Call `handler` for each message on `subject` until unsubscribed."""
        sub = MemorySubscription(self.nats, subject, handler)
        self.nats.subscriptions.append(sub)
        return sub


class MemoryStreamPublisher:
    """Twin of `jetstream.JetStreamPublisher`: a `StreamPublisher` on a `MemoryNats`."""

    def __init__(self, nats: MemoryNats) -> None:
        self.nats = nats

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Publish with dedupe by `msg_id`."""
        await self.nats.publish(subject, payload, msg_id=msg_id, headers=headers)


class MemoryPullConsumer:
    """Twin of `jetstream.PullConsumer`: a `StreamConsumer` fetching from a durable."""

    def __init__(self, nats: MemoryNats, durable: str) -> None:
        if durable not in nats.durables:
            raise LookupError(f"no durable consumer {durable!r}")
        self.nats, self.durable = nats, durable
        self.closed = False

    async def fetch(self, batch: int, wait_s: float) -> list[StreamMessage]:
        """Wait up to `wait_s` for a first message, then take what else is ready."""
        if self.closed:
            raise RuntimeError("fetch on a closed consumer")
        until = self.nats.clock() + wait_s
        while True:
            taken = self.nats.take(self.durable, max(batch, 1))
            if taken:
                return list(taken)
            now = self.nats.clock()
            if now >= until:
                return []
            due = self.nats.next_due(self.durable)
            await self.nats.wait_change(min(until, due) if due is not None else until)

    async def oldest_untaken(self) -> datetime | None:
        """When the oldest message no fetcher has taken was stored."""
        return self.nats.oldest_untaken(self.durable)

    async def close(self) -> None:
        """Stop fetching; unacked messages come back after their ack wait."""
        self.closed = True
