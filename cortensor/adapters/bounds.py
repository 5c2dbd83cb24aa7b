"""Queue bounds: the limits of brokers/topology.toml as queue arguments, and as a policy
for a queue that an earlier release declared without them.

RabbitMQ refuses to redeclare a queue with other arguments (PRECONDITION_FAILED), so a
queue that exists without its bounds cannot get them by declaration. A policy can bound
it in place, messages kept: `rabbitmqctl set_policy` (the tool the operator already runs
to issue credentials; no management plugin or HTTP port needed). New queues carry their
bounds as arguments, which hold on any server the URL names, with or without
rabbitmqctl at hand.
"""

from __future__ import annotations

import asyncio
import re

from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import ChannelPreconditionFailed

from cortensor.adapters import amqp
from cortensor.adapters.principals import rabbit
from cortensor.adapters.topology import QueueSpec

POLICY_KEYS = {
    "x-max-length": "max-length",
    "x-max-length-bytes": "max-length-bytes",
    "x-overflow": "overflow",
}
"""Queue arguments that bound a queue, and the policy key that sets each in place."""


def policy_of(spec: QueueSpec) -> dict[str, object]:
    """The bounds of a queue as a RabbitMQ policy definition (empty: none)."""
    return {POLICY_KEYS[k]: v for k, v in spec.arguments.items() if k in POLICY_KEYS}


def policy_name(spec: QueueSpec) -> str:
    """The policy that bounds one queue declared before its bounds."""
    return f"{spec.name}.bounds"


async def declare_bounded(connection: AbstractRobustConnection, spec: QueueSpec) -> str:
    """Declare a queue with its bounds (idempotent); returns how it is bounded:
    "arguments", or "policy" for an existing queue whose arguments lack its bounds."""
    try:
        await amqp.declare_queue(await connection.channel(), spec)
        return "arguments"
    except ChannelPreconditionFailed as exc:
        definition = policy_of(spec)
        if not definition or not any(f"arg '{k}'" in str(exc) for k in POLICY_KEYS):
            raise
    await asyncio.to_thread(
        rabbit.set_policy, policy_name(spec), f"^{re.escape(spec.name)}$", definition
    )
    channel = await connection.channel()
    queue = await channel.declare_queue(spec.name, passive=True)
    await queue.bind(spec.exchange, routing_key=spec.routing_key)
    return "policy"
