"""The broker topology of brokers/topology.toml, with names resolved for one namespace."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cortensor.errors import SetupIncomplete
from cortensor.paths import resource
from cortensor.schemas import Verdict

_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
"""A node id or an owner: one subject token, one routing-key word (`\\Z` ends it, where `$`
would let a trailing newline through)."""


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """A RabbitMQ exchange."""

    name: str
    type: str
    role: str = ""


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A RabbitMQ queue and the one binding that feeds it."""

    name: str
    exchange: str
    routing_key: str
    arguments: dict[str, Any]
    role: str = ""


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream."""

    name: str
    subjects: tuple[str, ...]
    storage: str
    max_age_s: float
    duplicate_window_s: float
    role: str = ""
    allow_direct: bool = False
    holds_content: bool = False
    """Its messages carry user content (inputs or outputs): they are kept only for the
    retention period (jetstream.apply_streams), in place of max_age_s."""
    max_bytes: int = -1
    """Most bytes the stream stores (-1: no limit); see `discard`."""
    max_msgs: int = -1
    """Most messages the stream stores (-1: no limit)."""
    discard: str = "old"
    """At a limit: "new" refuses the publish (the publisher gets an error and tries
    again; nothing it was told is stored is ever dropped), "old" drops the oldest."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable JetStream pull consumer."""

    stream: str
    durable: str
    ack_wait_s: float
    max_ack_pending: int


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**names)
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    return value


Spec = TypeVar("Spec", ExchangeSpec, QueueSpec, StreamSpec)


def _by_role(specs: tuple[Spec, ...], role: str) -> Spec:
    for spec in specs:
        if spec.role == role:
            return spec
    raise SetupIncomplete(f"the broker topology declares nothing with role {role!r}")


class Topology:
    """Every name the processes of one namespace use, read from the topology file."""

    def __init__(self, namespace: str, path: Path | None = None) -> None:
        with (path or resource("brokers", "topology.toml")).open("rb") as f:
            self._raw: dict[str, Any] = tomllib.load(f)
        self.namespace = namespace
        rabbit, nats = self._raw["rabbitmq"], self._raw["nats"]
        ns = {"ns": namespace}
        self.hw_classes: tuple[str, ...] = tuple(rabbit["hw_classes"])
        self.exchanges = tuple(ExchangeSpec(**_fill(e, ns)) for e in rabbit["exchanges"])
        self.exchanges += tuple(
            ExchangeSpec(name=self.hw_exchange(c), type="direct") for c in self.hw_classes
        )
        self.queues = tuple(QueueSpec(**_fill(q, ns)) for q in rabbit["queues"])
        self.streams = tuple(
            StreamSpec(**{**_fill(s, ns), "subjects": tuple(_fill(s["subjects"], ns))})
            for s in nats["streams"]
        )
        self.guard_consumer = ConsumerSpec(**_fill(nats["guard_consumer"], ns))
        router = _by_role(self.queues, "router")
        self.jobs_exchange = _by_role(self.exchanges, "jobs").name
        self.jobs_binding = router.routing_key
        self.router_queue = router.name
        self.dead_letter_exchange = _by_role(self.exchanges, "dead-letter").name
        self.dead_letter_queue = _by_role(self.queues, "dead-letter").name
        self.parked_exchange = _by_role(self.exchanges, "parked").name
        self.parked_queue = _by_role(self.queues, "parked").name
        self.router_delivery_limit = int(router.arguments.get("x-delivery-limit", 0))
        """How often the router's queue delivers a job before it dead-letters it (0: no
        limit)."""
        self.results_stream = _by_role(self.streams, "results").name
        self.verdicts_stream = _by_role(self.streams, "verdicts").name

    def hw_exchange(self, hw_class: str) -> str:
        """The direct exchange of a hardware class."""
        return str(
            self._raw["rabbitmq"]["hw_exchange"].format(ns=self.namespace, hw_class=hw_class)
        )

    def node_queue(self, node_id: str, hw_class: str) -> QueueSpec:
        """The queue a node consumes, bound to its class exchange with its id."""
        names = {"ns": self.namespace, "node_id": node_id, "hw_class": hw_class}
        return QueueSpec(**_fill(self._raw["rabbitmq"]["node_queue"], names))

    def _subject(self, key: str, **names: str) -> str:
        return str(self._raw["nats"]["subjects"][key].format(ns=self.namespace, **names))

    def jobs_routing_key(self, owner: str) -> str:
        """The routing key a client publishes its jobs with: its own name."""
        return self.jobs_binding.replace("*", owner)

    def owner_of(self, routing_key: str) -> str | None:
        """The owner a job was published by, from its routing key (None: not a job key)."""
        prefix = self.jobs_binding.removesuffix("*")
        owner = routing_key.removeprefix(prefix)
        if not routing_key.startswith(prefix) or not _TOKEN.match(owner):
            return None
        return owner

    def results_subject(self, job_id: str, *, node_id: str) -> str:
        """Where node `node_id` publishes its result for a job (`*` for any)."""
        return self._subject("results", job_id=job_id, node_id=node_id)

    def node_of_result(self, subject: str) -> str | None:
        """The node a result subject names (None: not a result subject)."""
        prefix = self._subject("results", node_id="", job_id="").removesuffix(".")
        parts = subject.removeprefix(prefix).split(".")
        if not subject.startswith(prefix) or len(parts) != 2 or not _TOKEN.match(parts[0]):
            return None
        return parts[0]

    def verdicts_subject(self, job_id: str, *, owner: str) -> str:
        """Where the verdict on a job of `owner` is published."""
        return self._subject("verdicts", job_id=job_id, owner=owner)

    def part_verdicts_subject(self, parent_id: str, part: str, *, owner: str) -> str:
        """Where the verdict on one part of a split job is published (`*` for any part)."""
        return self._subject("part_verdicts", job_id=parent_id, part=part, owner=owner)

    def receipt_subject(self, job_id: str, *, owner: str) -> str:
        """Where the router says it recorded a job of `owner` (before its verdict)."""
        return self._subject("receipt", job_id=job_id, owner=owner)

    def verdict_subject(self, verdict: Verdict) -> str:
        """Where a verdict goes: its job's subject, or its parent's parts subject."""
        if verdict.parent_id is not None:
            return self.part_verdicts_subject(
                str(verdict.parent_id), str(verdict.part), owner=verdict.owner
            )
        return self.verdicts_subject(str(verdict.job_id), owner=verdict.owner)

    def heartbeat_subject(self, node_id: str) -> str:
        """Where a node announces itself; `*` as node id subscribes to every node."""
        return self._subject("heartbeat", node_id=node_id)

    def node_of_heartbeat(self, subject: str) -> str | None:
        """The node a heartbeat subject names (None: not a heartbeat subject)."""
        head, _, tail = self.heartbeat_subject("\0").partition("\0")
        if len(subject) <= len(head) + len(tail) or not (
            subject.startswith(head) and subject.endswith(tail)
        ):
            return None
        node = subject[len(head) : len(subject) - len(tail)]
        return node if _TOKEN.match(node) else None
