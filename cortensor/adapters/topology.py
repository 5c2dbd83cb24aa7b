"""The broker topology of brokers/topology.toml, with names resolved for one namespace."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cortensor.errors import SetupIncomplete
from cortensor.paths import resource
from cortensor.schemas import Verdict


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
        self.jobs_routing_key = router.routing_key
        self.router_queue = router.name
        self.dead_letter_exchange = _by_role(self.exchanges, "dead-letter").name
        self.dead_letter_queue = _by_role(self.queues, "dead-letter").name
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

    def results_subject(self, job_id: str) -> str:
        """Where a node publishes its result for a job."""
        return self._subject("results", job_id=job_id)

    def verdicts_subject(self, job_id: str) -> str:
        """Where the guard publishes a job's verdict."""
        return self._subject("verdicts", job_id=job_id)

    def part_verdicts_subject(self, parent_id: str, part: str) -> str:
        """Where the verdict on one part of a split job is published (`*` for any part)."""
        return self._subject("part_verdicts", job_id=parent_id, part=part)

    def verdict_subject(self, verdict: Verdict) -> str:
        """Where a verdict goes: its job's subject, or its parent's parts subject."""
        if verdict.parent_id is not None:
            return self.part_verdicts_subject(str(verdict.parent_id), str(verdict.part))
        return self.verdicts_subject(str(verdict.job_id))

    def heartbeat_subject(self, node_id: str) -> str:
        """Where a node announces itself; `*` as node id subscribes to every node."""
        return self._subject("heartbeat", node_id=node_id)
