"""The broker sides the services use, as interfaces: the real adapters (amqp, jetstream)
and their in-memory twins (cortensor.adapters.memory) both implement them, and one
contract test suite (tests/contract/) holds both to the same delivery semantics.

- Work queues (RabbitMQ): at-least-once. A delivered message is settled exactly once:
  `ack` removes it, `nack(requeue=True)` puts it back for any consumer (redelivered),
  `nack(requeue=False)` dead-letters it; a message never settled comes back when its
  consumer goes away. A queue with a delivery limit dead-letters a message delivered
  more often than that. Publishing is confirmed, and a message that no queue takes
  raises `Unroutable` instead of vanishing.
- Streams (JetStream): a publish returns once the stream stored the message; a second
  publish with the same message id within the duplicate window is dropped. A durable
  pull consumer hands each message to one fetcher at a time; a message not acked within
  its ack wait, or nak'ed, is delivered again; `term` stops its redelivery;
  `in_progress` restarts its ack wait. The consumer tells when the oldest message not
  yet taken (acked or termed) was stored, whoever holds it.
- Signals (core NATS, heartbeats): at-most-once, to whoever subscribes at the time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from cortensor.errors import Busy, CortensorError


class Unroutable(CortensorError):
    """A confirmed publish that no queue took: the broker returned the message.

    The caller decides what that means (for the router: the node's queue is gone).
    """


class QueueFull(Busy):
    """A confirmed publish that a full queue refused: the broker nacked it (the queue's
    `x-overflow` is reject-publish). The queue is there; try again later."""


class Delivery(Protocol):
    """One message delivered from a work queue, to be settled exactly once."""

    @property
    def body(self) -> bytes:
        """The message's bytes."""
        ...

    @property
    def message_id(self) -> str | None:
        """The publisher's id of the message."""
        ...

    @property
    def routing_key(self) -> str | None:
        """The routing key it was published with (a job's names its owner)."""
        ...

    @property
    def redelivered(self) -> bool | None:
        """Whether the message was delivered before (and not acked)."""
        ...

    @property
    def headers(self) -> Mapping[str, Any]:
        """The message's headers."""
        ...

    async def ack(self) -> None:
        """Done with it: the queue forgets the message."""
        ...

    async def nack(self, *, requeue: bool = True) -> None:
        """Not done: back to the queue (`requeue`), or to the dead-letter exchange."""
        ...


DeliveryHandler = Callable[[Delivery], Awaitable[None]]


class JobQueue(Protocol):
    """The router's side of the job queue: competing consumers, manual settlement."""

    async def consume(self, handler: DeliveryHandler) -> None:
        """Deliver messages to `handler` (up to the prefetch limit unsettled at a time)."""
        ...

    async def cancel(self) -> None:
        """Stop delivering; messages in hand may still be settled."""
        ...

    async def dead_letter(
        self,
        body: bytes,
        reason: str,
        *,
        message_id: str,
        routing_key: str = "",
        input_at_fault: bool = False,
    ) -> None:
        """Send a message that cannot be processed to the dead-letter exchange, with
        `reason` in a header (confirmed), under `routing_key` (the one it came with: a
        job's names its owner); `input_at_fault` says its content is to blame."""
        ...


class DeadLetterQueue(Protocol):
    """The dead-letter queue's reader side: competing consumers, manual settlement, and a
    parked queue for what nobody can end."""

    async def consume(self, handler: DeliveryHandler) -> None:
        """Deliver dead letters to `handler` (up to the prefetch limit unsettled)."""
        ...

    async def cancel(self) -> None:
        """Stop delivering; messages in hand may still be settled."""
        ...

    async def park(
        self, body: bytes, *, message_id: str, routing_key: str, headers: Mapping[str, Any]
    ) -> None:
        """Keep a message in the parked queue with `headers` (confirmed)."""
        ...


class TaskPublisher(Protocol):
    """The router's side of the node queues: one direct exchange per hardware class, one
    queue per node bound with its node id."""

    async def publish(
        self,
        hw_class: str,
        node_id: str,
        body: bytes,
        *,
        headers: Mapping[str, Any],
        message_id: str,
    ) -> None:
        """Publish a persistent message to `node_id`'s queue and wait for the broker's
        confirm; raises `Unroutable` when no queue is bound for that node."""
        ...


class Signal(Protocol):
    """A core NATS message: a subject and bytes, nothing to settle."""

    @property
    def subject(self) -> str:
        """Where it was published."""
        ...

    @property
    def data(self) -> bytes:
        """The payload."""
        ...

    @property
    def headers(self) -> Mapping[str, str] | None:
        """The message's headers (a node's signature), None when it has none."""
        ...


SignalHandler = Callable[[Signal], Awaitable[None]]


class Subscription(Protocol):
    """A live subscription."""

    async def unsubscribe(self) -> None:
        """Stop receiving."""
        ...


class SignalBus(Protocol):
    """Core NATS publish/subscribe (heartbeats): at-most-once, to current subscribers."""

    async def publish(
        self, subject: str, payload: bytes, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Send to whoever listens now, with `headers` when given."""
        ...

    async def subscribe(self, subject: str, handler: SignalHandler) -> Subscription:
        """Call `handler` for every message on `subject` (`*` and `>` wildcards) from
        the moment this returns until unsubscribed."""
        ...


class StreamPublisher(Protocol):
    """Publishing to a JetStream stream with dedupe by message id."""

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Publish and wait for the stream's ack; within the stream's duplicate window a
        second publish with the same `msg_id` is acked and dropped. `headers` are stored
        with the message."""
        ...


class StreamMessage(Protocol):
    """A message fetched from a durable consumer, to be settled once."""

    @property
    def subject(self) -> str:
        """Where it was published."""
        ...

    @property
    def data(self) -> bytes:
        """The payload."""
        ...

    @property
    def headers(self) -> Mapping[str, str] | None:
        """The headers it was published with (a node's signature), None when none."""
        ...

    async def ack(self) -> None:
        """Done: never delivered again."""
        ...

    async def nak(self, delay: float | None = None) -> None:
        """Not done: deliver again (after `delay` seconds)."""
        ...

    async def term(self) -> None:
        """Never deliver again, without processing it (a malformed message)."""
        ...

    async def in_progress(self) -> None:
        """Still being worked on: its ack wait starts again."""
        ...


class ResultsBacklog(Protocol):
    """What the guards' durable consumer has not taken yet."""

    async def oldest_untaken(self) -> datetime | None:
        """When the oldest message that no fetcher has acked or termed yet was stored
        (one never delivered, one in a fetcher's hands, one waiting to be delivered
        again); None when every stored message has been taken."""
        ...


class StreamConsumer(ResultsBacklog, Protocol):
    """A durable pull consumer shared by competing fetchers (the guards)."""

    async def fetch(self, batch: int, wait_s: float) -> list[StreamMessage]:
        """Wait up to `wait_s` seconds for a first message, then take up to `batch` in
        all of those already waiting; [] when none came."""
        ...

    async def close(self) -> None:
        """Stop fetching; unacked messages are delivered again after their ack wait."""
        ...
