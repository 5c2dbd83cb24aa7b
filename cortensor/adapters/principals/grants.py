"""What each kind of principal may do on RabbitMQ and on NATS, by name.

Pure: the user names, reply prefixes and permissions follow from the namespace's
topology, the principal's kind and its name (docs: DESIGN.md, trust boundaries). The
servers enforce them; `rabbit` and `nats_auth` write them there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from cortensor.adapters.topology import Topology
from cortensor.errors import BadInput

Kind = Literal["node", "client", "gateway", "router", "guard", "reports", "owner", "admin"]
KINDS: tuple[Kind, ...] = get_args(Kind)
ISSUED_KINDS: tuple[Kind, ...] = (
    "node",
    "client",
    "gateway",
    "router",
    "guard",
    "reports",
    "owner",
)
"""The kinds `cortensor credentials issue` makes; the admin is made by `ops/services`."""

ADMIN_USER = "cortensor-admin"
"""The operator's user on RabbitMQ and on NATS: every permission, no namespace."""

_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_NAME = re.compile(f"^{_NAME_PATTERN}$")


def check_name(name: str) -> str:
    """`name` if it is a principal name (one subject token, one routing-key word)."""
    if not _NAME.match(name):
        raise BadInput(
            f"{name!r} is not a principal name: letters, digits, '_' and '-', starting with"
            " a letter or digit, at most 64"
        )
    return name


def user_name(namespace: str, kind: Kind, name: str) -> str:
    """A principal's user name on RabbitMQ and on NATS: `<ns>.<kind>.<name>`."""
    return f"{namespace}.{kind}.{check_name(name)}"


def name_of(namespace: str, kind: Kind, user: str) -> str | None:
    """The principal name in `user`, if it is a user of `kind` in `namespace` (the
    inverse of `user_name`); else None."""
    prefix = f"{namespace}.{kind}."
    name = user.removeprefix(prefix)
    return name if user.startswith(prefix) and _NAME.match(name) else None


def namespace_prefix(namespace: str) -> str:
    """What the user names of one namespace's principals start with."""
    return f"{namespace}."


def inbox_prefix(namespace: str, kind: Kind, name: str) -> str:
    """A principal's own NATS reply subjects: JetStream acks, fetched messages and
    direct-get replies come back there, and only it may subscribe to them."""
    return f"_I.{user_name(namespace, kind, name)}"


@dataclass(frozen=True, slots=True)
class NatsPermissions:
    """Subjects a NATS user may publish and subscribe to; nothing else is allowed."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def nats_permissions(topology: Topology, kind: Kind, name: str) -> NatsPermissions | None:
    """What principal `name` of `kind` may do on NATS; None: it gets no NATS user.

    A node publishes its heartbeat and results under its own id and hears nothing but
    the acks of its publishes; a client reads its own verdicts (live, or from the stream
    by a direct get whose API subject names them); a gateway reads every owner's the
    same way (it answers for many clients), and nothing else; guards fetch and ack results from
    their shared durable consumer and publish verdicts; the router hears heartbeats,
    publishes the verdicts of jobs that fail before any node answers, and reads how far
    the guards' consumer has got (its info, and a result by sequence for the time it was
    stored: cortensor.protocol.outages.judging_horizon).
    """
    ns = topology.namespace
    inbox = f"{inbox_prefix(ns, kind, name)}.>"
    results, verdicts = topology.results_stream, topology.verdicts_stream
    consumer = topology.guard_consumer
    (every_verdict,) = next(s for s in topology.streams if s.name == verdicts).subjects
    match kind:
        case "node":
            return NatsPermissions(
                publish=(
                    topology.results_subject(">", node_id=name),
                    topology.heartbeat_subject(name),
                ),
                subscribe=(inbox,),
            )
        case "client":
            own_verdicts = topology.verdicts_subject(">", owner=name)
            return NatsPermissions(
                publish=(f"$JS.API.DIRECT.GET.{verdicts}.{own_verdicts}",),
                subscribe=(own_verdicts, inbox),
            )
        case "gateway":
            return NatsPermissions(
                publish=(f"$JS.API.DIRECT.GET.{verdicts}.{every_verdict}",),
                subscribe=(every_verdict, inbox),
            )
        case "guard":
            return NatsPermissions(
                publish=(
                    every_verdict,
                    f"$JS.API.CONSUMER.MSG.NEXT.{consumer.stream}.{consumer.durable}",
                    f"$JS.API.CONSUMER.INFO.{consumer.stream}.{consumer.durable}",
                    f"$JS.ACK.{results}.>",
                    f"$JS.API.STREAM.INFO.{results}",
                    f"$JS.API.STREAM.MSG.GET.{results}",
                    f"$JS.API.STREAM.INFO.{verdicts}",
                ),
                subscribe=(inbox,),
            )
        case "router":
            return NatsPermissions(
                publish=(
                    every_verdict,
                    f"$JS.API.CONSUMER.INFO.{consumer.stream}.{consumer.durable}",
                    f"$JS.API.STREAM.MSG.GET.{results}",
                ),
                subscribe=(topology.heartbeat_subject("*"), inbox),
            )
        case "reports" | "owner" | "admin":
            return None


@dataclass(frozen=True, slots=True)
class RabbitGrant:
    """A RabbitMQ user's permissions on the vhost (anchored regular expressions over
    exchange and queue names), and on the jobs exchange's routing keys when `topic` is
    set: (exchange, write, read)."""

    configure: str
    write: str
    read: str
    topic: tuple[str, str, str] | None = None


NOTHING = "^$"
"""A permission that matches no name."""


def _exactly(*names: str) -> str:
    return "|".join(f"^{re.escape(n)}$" for n in names) or NOTHING


def rabbit_grant(
    topology: Topology, kind: Kind, name: str, *, hw_class: str = ""
) -> RabbitGrant | None:
    """What principal `name` of `kind` may do on RabbitMQ; None: it gets no RabbitMQ user.

    Nobody but the admin configures anything: queues, exchanges and bindings are made
    by `cortensor brokers setup` and, for a node's queue, by whoever issues the node's
    credentials. A node reads its own queue; the router reads its queue and the
    dead-letter queue, and writes to the class exchanges, the dead letters and the
    parked queue's exchange; a client writes to the jobs exchange with its own routing
    key only (the topic permission pins `job.<name>`); a gateway writes there under any
    owner's key (`job.<owner>`, one owner name: it submits each caller's jobs under the
    caller's name) and reads nothing. Dead and parked messages hold
    user content: nobody else reads them but the admin (`cortensor dead`).
    """
    match kind:
        case "node":
            queue = topology.node_queue(check_name(name), hw_class or topology.hw_classes[0])
            return RabbitGrant(NOTHING, NOTHING, _exactly(queue.name))
        case "router":
            exchanges = [topology.hw_exchange(c) for c in topology.hw_classes]
            return RabbitGrant(
                NOTHING,
                _exactly(*exchanges, topology.dead_letter_exchange, topology.parked_exchange),
                _exactly(topology.router_queue, topology.dead_letter_queue),
            )
        case "client":
            key = topology.jobs_routing_key(check_name(name))
            return RabbitGrant(
                NOTHING,
                _exactly(topology.jobs_exchange),
                NOTHING,
                topic=(topology.jobs_exchange, _exactly(key), NOTHING),
            )
        case "gateway":
            any_owner = f"^{re.escape(topology.jobs_routing_key(''))}{_NAME_PATTERN}$"
            return RabbitGrant(
                NOTHING,
                _exactly(topology.jobs_exchange),
                NOTHING,
                topic=(topology.jobs_exchange, any_owner, NOTHING),
            )
        case "guard" | "reports" | "owner" | "admin":
            return None
