"""A revoked credential is cut off at once: its open connections are closed, it cannot
log in again, and its node's key no longer speaks for its id."""

from __future__ import annotations

import uuid
from pathlib import Path

import aio_pika
import pytest
from aiormq.exceptions import ProbableAuthenticationError
from nats.errors import Error as NatsError

from tests.conftest import eventually
from tests.security.harness import (
    FLEET_MARKS,
    HW_CLASS,
    SecuredFleet,
    amqp_as,
    issue,
    nats_as,
    result_payload,
    revoke,
    signed,
)

pytestmark = FLEET_MARKS


async def test_a_revoked_node_is_cut_off(secured: SecuredFleet, tmp_path: Path) -> None:
    """A second attacker node, issued and then revoked while connected: RabbitMQ and
    NATS close its connections, refuse its next logins, and the ledger marks its key
    revoked."""
    name = f"revoked-{uuid.uuid4().hex[:8]}"
    node = issue(secured.admin, "node", name, tmp_path / f"{name}.json", "--hw-class", HW_CLASS)
    job_id = uuid.uuid4()
    subject = secured.topology.results_subject(str(job_id), node_id=name)
    payload = result_payload(node_id=name, job_id=job_id)
    async with nats_as(node) as watched, amqp_as(node) as connection:
        ack = await watched.nc.jetstream().publish(subject, payload, headers=signed(node, payload))
        assert ack.seq > 0  # the credential worked until now
        revoke(secured.admin, "node", name)
        await eventually(
            lambda: not connection.connected.is_set(), what="RabbitMQ closed its connection"
        )
        await eventually(lambda: watched.nc.is_closed, what="NATS closed its connection")
    with pytest.raises(NatsError):
        async with nats_as(node):
            pass
    with pytest.raises(ProbableAuthenticationError):
        await aio_pika.connect(node.settings.amqp_url)
    revoked = await secured.fetchval("SELECT revoked_at FROM node_keys WHERE node_id = $1", name)
    assert revoked is not None
    await secured.good_job_verified()
