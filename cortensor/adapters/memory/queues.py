"""An in-memory RabbitMQ for tests: exchanges, bound queues, consumers with a prefetch
limit, manual settlement, redelivery and dead letters, as the services rely on them.

`MemoryBroker` plays the server; `MemoryWorkQueue` and `MemoryTaskPublisher` are the
twins of `amqp.AmqpWorkQueue` and `amqp.AmqpTaskPublisher`. What it keeps of RabbitMQ's
semantics (tests/contract/ checks each against the real server):

- a direct exchange routes by exact routing key, a fanout one to every bound queue, a
  topic one by pattern (`topic_matches`: `*` one word, `#` any number of words);
- a mandatory publish that reaches no queue raises `Unroutable`;
- a queue with `x-max-length` and `x-overflow: reject-publish` refuses a publish when
  that many messages are ready in it: `QueueFull`, as the nack of a confirmed publish
  (a real quorum queue may take one more first);
- a consumer holds at most `prefetch` unsettled messages (0: no limit); competing
  consumers each get a message, never the same one at once;
- `nack(requeue=True)` and a closed channel put unsettled messages back, marked
  redelivered; past a queue's `x-delivery-limit` returns, or on `nack(requeue=False)`,
  a message goes to the queue's `x-dead-letter-exchange` with `x-first-death-reason`;
- settling a message twice raises.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cortensor.adapters.interfaces import DeliveryHandler, QueueFull, Unroutable
from cortensor.adapters.topology import QueueSpec, Topology
from cortensor.errors import CortensorError
from cortensor.protocol.dead import dead_letter_headers

DEATH_REASON_HEADER = "x-first-death-reason"
"""The header RabbitMQ sets on a message it dead-letters: `rejected` or `delivery_limit`."""
DEATH_QUEUE_HEADER = "x-first-death-queue"
"""The header RabbitMQ sets on a message it dead-letters: the queue it came from (with
`x-death`, the list of its deaths)."""


class AlreadySettled(CortensorError):
    """A delivery was acked or nacked a second time."""


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether a topic binding takes a routing key, as RabbitMQ decides it: both are
    words split at dots (an empty key has none, `a.` has an empty second word); `*`
    stands for exactly one word, `#` for any number, none included."""
    return _match(_words(pattern), _words(routing_key))


def _words(key: str) -> tuple[str, ...]:
    return tuple(key.split(".")) if key else ()


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[skip:]) for skip in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _match(rest, words[1:])


@dataclass(slots=True)
class _Message:
    body: bytes
    headers: dict[str, Any]
    message_id: str | None
    routing_key: str = ""
    delivered: int = 0
    returned: int = 0


@dataclass(slots=True)
class _Queue:
    name: str
    dead_letter_exchange: str | None
    delivery_limit: int | None
    ready: deque[_Message] = field(default_factory=deque)
    consumers: list[_Consumer] = field(default_factory=list)
    turn: int = 0
    max_length: int | None = None
    """Ready messages past which a publish is refused (x-max-length with reject-publish)."""


@dataclass(eq=False, slots=True)
class _Consumer:
    queue: _Queue
    channel: MemoryChannel
    handler: DeliveryHandler
    active: bool = True


async def _handle(handler: DeliveryHandler, delivery: MemoryDelivery) -> None:
    await handler(delivery)


_ROUTES: dict[str, Callable[[str, str], bool]] = {
    "direct": str.__eq__,
    "fanout": lambda _binding, _key: True,
    "topic": topic_matches,
}
"""By exchange type: whether a binding's key takes a message's routing key."""


class MemoryDelivery:
    """A delivered message (a `Delivery`), settled through the broker that delivered it."""

    def __init__(self, broker: MemoryBroker, queue: _Queue, message: _Message) -> None:
        self.broker, self.queue, self.message = broker, queue, message
        self.channel: MemoryChannel | None = None
        self.settled = False

    @property
    def body(self) -> bytes:
        """The message's bytes."""
        return self.message.body

    @property
    def message_id(self) -> str | None:
        """The publisher's id."""
        return self.message.message_id

    @property
    def routing_key(self) -> str:
        """The routing key it was published with."""
        return self.message.routing_key

    @property
    def redelivered(self) -> bool:
        """Whether this message was delivered before."""
        return self.message.delivered > 1

    @property
    def headers(self) -> Mapping[str, Any]:
        """The message's headers."""
        return self.message.headers

    def _settle(self) -> None:
        if self.settled:
            raise AlreadySettled(f"message {self.message_id} was settled already")
        self.settled = True
        if self.channel is not None:
            self.channel.unsettled.discard(self)

    async def ack(self) -> None:
        """Remove the message from its queue."""
        self._settle()
        self.broker.dispatch(self.queue)

    async def nack(self, *, requeue: bool = True) -> None:
        """Return it to the queue, or dead-letter it (`requeue=False`)."""
        self._settle()
        if requeue:
            self.broker.requeue(self.queue, self.message)
        else:
            self.broker.dead_letter(self.queue, self.message, "rejected")
        self.broker.dispatch(self.queue)


class MemoryChannel:
    """A channel: its consumers, and the deliveries they have not settled yet.

    Closing it puts the unsettled messages back in their queues, as RabbitMQ does when a
    consumer's connection drops.
    """

    def __init__(self, broker: MemoryBroker, prefetch: int) -> None:
        self.broker, self.prefetch = broker, prefetch
        self.unsettled: set[MemoryDelivery] = set()
        self.consumers: list[_Consumer] = []
        self.closed = False

    def has_room(self) -> bool:
        """Whether the prefetch limit allows another delivery."""
        return not self.closed and (self.prefetch == 0 or len(self.unsettled) < self.prefetch)

    def consume(self, queue: str, handler: DeliveryHandler) -> _Consumer:
        """Start delivering `queue`'s messages to `handler`."""
        target = self.broker.queue(queue)
        consumer = _Consumer(target, self, handler)
        target.consumers.append(consumer)
        self.consumers.append(consumer)
        self.broker.dispatch(target)
        return consumer

    def cancel(self, consumer: _Consumer) -> None:
        """Stop delivering to `consumer`; its deliveries in hand may still be settled."""
        consumer.active = False
        if consumer in consumer.queue.consumers:
            consumer.queue.consumers.remove(consumer)

    def close(self) -> None:
        """Cancel every consumer and put every unsettled message back."""
        for consumer in list(self.consumers):
            self.cancel(consumer)
        self.closed = True
        pending, self.unsettled = list(self.unsettled), set()
        for delivery in pending:
            delivery.settled = True
            self.broker.requeue(delivery.queue, delivery.message)
        for queue in {id(d.queue): d.queue for d in pending}.values():
            self.broker.dispatch(queue)


class MemoryBroker:
    """The server side: exchanges, queues and bindings, from a topology or declared."""

    def __init__(self, topology: Topology | None = None) -> None:
        self.exchanges: dict[str, str] = {}
        self.bindings: dict[str, list[tuple[str, str]]] = {}
        self.queues: dict[str, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        if topology is not None:
            for exchange in topology.exchanges:
                self.declare_exchange(exchange.name, exchange.type)
            for spec in topology.queues:
                self.declare_queue(spec)

    def declare_exchange(self, name: str, kind: str) -> None:
        """A direct, fanout or topic exchange (idempotent)."""
        if kind not in _ROUTES:
            raise ValueError(f"exchange type {kind!r}: the twin has {', '.join(_ROUTES)}")
        self.exchanges.setdefault(name, kind)
        self.bindings.setdefault(name, [])

    def declare_queue(self, spec: QueueSpec) -> None:
        """A queue with its arguments and its one binding (idempotent)."""
        if spec.exchange not in self.exchanges:
            raise LookupError(f"no exchange {spec.exchange!r} to bind {spec.name!r} to")
        if spec.name not in self.queues:
            limit = spec.arguments.get("x-delivery-limit")
            most = spec.arguments.get("x-max-length")
            refuses = spec.arguments.get("x-overflow") == "reject-publish"
            self.queues[spec.name] = _Queue(
                spec.name,
                spec.arguments.get("x-dead-letter-exchange"),
                None if limit is None else int(limit),
                max_length=int(most) if most is not None and refuses else None,
            )
        binding = (spec.routing_key, spec.name)
        if binding not in self.bindings[spec.exchange]:
            self.bindings[spec.exchange].append(binding)

    def delete_queue(self, name: str) -> None:
        """Remove a queue, its bindings and its messages."""
        self.queues.pop(name, None)
        for bound in self.bindings.values():
            bound[:] = [(key, queue) for key, queue in bound if queue != name]

    def queue(self, name: str) -> _Queue:
        """A declared queue; a missing one raises, as a passive declare does."""
        try:
            return self.queues[name]
        except KeyError:
            raise LookupError(f"no queue {name!r}") from None

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        mandatory: bool = False,
    ) -> None:
        """Route a message to the bound queues; raises `Unroutable` when a mandatory one
        reaches none."""
        if exchange not in self.exchanges:
            raise LookupError(f"no exchange {exchange!r}")
        routes = _ROUTES[self.exchanges[exchange]]
        targets = dict.fromkeys(q for key, q in self.bindings[exchange] if routes(key, routing_key))
        if not targets and mandatory:
            raise Unroutable(f"no queue for {routing_key!r} on {exchange}")
        for name in targets:
            full = self.queues[name]
            if full.max_length is not None and len(full.ready) >= full.max_length:
                raise QueueFull(f"queue {name} holds {full.max_length} messages")
        for name in targets:
            queue = self.queues[name]
            queue.ready.append(_Message(body, dict(headers or {}), message_id, routing_key))
            self.dispatch(queue)

    def channel(self, prefetch: int = 0) -> MemoryChannel:
        """A new channel with this prefetch limit (0: none)."""
        return MemoryChannel(self, prefetch)

    def requeue(self, queue: _Queue, message: _Message) -> None:
        """Return a message to the head of its queue, or past the delivery limit, to the
        dead-letter exchange."""
        message.returned += 1
        if queue.delivery_limit is not None and message.returned > queue.delivery_limit:
            self.dead_letter(queue, message, "delivery_limit")
        elif queue.name in self.queues:
            queue.ready.appendleft(message)

    def dead_letter(self, queue: _Queue, message: _Message, reason: str) -> None:
        """Send a message to its queue's dead-letter exchange (dropped when it has none)."""
        if queue.dead_letter_exchange is None:
            return
        first = {DEATH_REASON_HEADER: reason, DEATH_QUEUE_HEADER: queue.name}
        death = {
            "count": 1,
            "reason": reason,
            "queue": queue.name,
            "time": datetime.now(UTC),
            "routing-keys": [message.routing_key],
        }
        earlier = message.headers.get("x-death")
        deaths = [death, *(earlier if isinstance(earlier, list) else [])]
        headers = {**first, **message.headers, "x-death": deaths}
        self.publish(
            queue.dead_letter_exchange,
            message.routing_key,
            message.body,
            headers=headers,
            message_id=message.message_id,
        )

    def dispatch(self, queue: _Queue) -> None:
        """Hand ready messages to consumers with room, in turn, each in a task of its own
        as aio-pika runs its callbacks."""
        while queue.ready:
            ready = [c for c in queue.consumers if c.active and c.channel.has_room()]
            if not ready:
                return
            consumer = ready[queue.turn % len(ready)]
            queue.turn += 1
            message = queue.ready.popleft()
            message.delivered += 1
            delivery = MemoryDelivery(self, queue, message)
            delivery.channel = consumer.channel
            consumer.channel.unsettled.add(delivery)
            task = asyncio.get_running_loop().create_task(_handle(consumer.handler, delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def get(self, queue: str) -> MemoryDelivery | None:
        """Take the next ready message, settled on the spot (`basic.get` with no ack)."""
        target = self.queue(queue)
        if not target.ready:
            return None
        message = target.ready.popleft()
        message.delivered += 1
        delivery = MemoryDelivery(self, target, message)
        delivery.settled = True
        return delivery

    def depth(self, queue: str) -> int:
        """How many messages wait in `queue` (not counting those delivered)."""
        return len(self.queue(queue).ready)


class MemoryWorkQueue:
    """Twin of `amqp.AmqpWorkQueue`: a `JobQueue` on a `MemoryChannel`."""

    def __init__(self, channel: MemoryChannel, topology: Topology, queue: str = "") -> None:
        self.channel, self.topology = channel, topology
        self.queue_name = queue or topology.router_queue
        self._consumer: _Consumer | None = None

    async def consume(self, handler: DeliveryHandler) -> None:
        """Deliver messages to `handler` until `cancel`."""
        self._consumer = self.channel.consume(self.queue_name, handler)

    async def cancel(self) -> None:
        """Stop delivering; messages in hand may still be settled."""
        if self._consumer is not None:
            self.channel.cancel(self._consumer)
            self._consumer = None

    async def dead_letter(
        self,
        body: bytes,
        reason: str,
        *,
        message_id: str,
        routing_key: str = "",
        input_at_fault: bool = False,
    ) -> None:
        """Send a message to the dead-letter exchange with the reason in a header."""
        self.channel.broker.publish(
            self.topology.dead_letter_exchange,
            routing_key,
            body,
            headers=dead_letter_headers(reason, input_at_fault=input_at_fault),
            message_id=message_id,
        )


class MemoryDeadLetters:
    """Twin of `amqp.AmqpDeadLetters`: a `DeadLetterQueue` on a `MemoryChannel`."""

    def __init__(self, channel: MemoryChannel, topology: Topology) -> None:
        self.channel, self.topology = channel, topology
        self._work = MemoryWorkQueue(channel, topology, topology.dead_letter_queue)

    async def consume(self, handler: DeliveryHandler) -> None:
        """Deliver dead letters to `handler` until `cancel`."""
        await self._work.consume(handler)

    async def cancel(self) -> None:
        """Stop delivering; messages in hand may still be settled."""
        await self._work.cancel()

    async def park(
        self, body: bytes, *, message_id: str, routing_key: str, headers: Mapping[str, Any]
    ) -> None:
        """Keep a message in the parked queue."""
        self.channel.broker.publish(
            self.topology.parked_exchange,
            routing_key,
            body,
            headers=headers,
            message_id=message_id or None,
        )
        await asyncio.sleep(0)


class MemoryTaskPublisher:
    """Twin of `amqp.AmqpTaskPublisher`: a `TaskPublisher` on a `MemoryBroker`."""

    def __init__(self, broker: MemoryBroker, topology: Topology) -> None:
        self.broker, self.topology = broker, topology

    async def publish(
        self,
        hw_class: str,
        node_id: str,
        body: bytes,
        *,
        headers: Mapping[str, Any],
        message_id: str,
    ) -> None:
        """Route to `node_id`'s queue; raises `Unroutable` when it has none."""
        self.broker.publish(
            self.topology.hw_exchange(hw_class),
            node_id,
            body,
            headers=headers,
            message_id=message_id,
            mandatory=True,
        )
        await asyncio.sleep(0)  # a confirmed publish yields to the loop, as the real one does
