"""The service loops apply cortensor.errors.DISPOSITION: a failure that may pass hands the
message back after a back-off, one that cannot parks it with its reason.

The router and the guard run on the in-memory brokers with the real ledger; the failure
is injected where the work happens (the router's `take`, the guard ledger's
`take_results`), as the ledger or a bug would raise it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from cortensor.adapters import memory
from cortensor.adapters.amqp import REASON_HEADER
from cortensor.adapters.ledger.guard import GuardLedger
from cortensor.adapters.ledger.router import RouterLedger
from cortensor.adapters.memory import MemoryBroker, MemoryChannel, MemoryKeys, MemoryNats
from cortensor.adapters.topology import Topology
from cortensor.errors import (
    BadInput,
    LedgerUnavailable,
    PermanentError,
    SetupIncomplete,
)
from cortensor.schemas import InferenceResult, JobRequest
from cortensor.services.guard.service import Guard
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from tests.conftest import eventually
from tests.node_keys import public_key_of, signed_by

pytestmark = [pytest.mark.postgres]


@dataclass
class Twins:
    topology: Topology
    broker: MemoryBroker
    nats: MemoryNats
    router: Router
    guard: Guard
    channel: MemoryChannel

    def submit(self) -> JobRequest:
        job = JobRequest(inputs=["hello"], redundancy=1)
        self.broker.publish(
            self.topology.jobs_exchange,
            self.topology.jobs_routing_key("client-1"),
            job.model_dump_json().encode(),
            message_id=str(job.job_id),
        )
        return job

    def settled(self) -> bool:
        return self.broker.depth(self.topology.router_queue) == 0 and not self.channel.unsettled


@pytest.fixture
async def twins(ledger_settings: Settings) -> AsyncIterator[Twins]:
    settings = ledger_settings.model_copy(
        update={
            "namespace": f"disp{uuid.uuid4().hex[:8]}",
            "retry_base_s": 0.01,
            "retry_cap_s": 0.02,
        }
    )
    topology = Topology(settings.namespace)
    broker, nats = MemoryBroker(topology), MemoryNats(topology)
    router_ledger = await RouterLedger.connect(settings.asyncpg_dsn)
    guard_ledger = await GuardLedger.connect(settings.asyncpg_dsn)
    keys = MemoryKeys({"n1": public_key_of("n1")})
    ports, channel = memory.router_ports(router_ledger, broker, nats, topology, keys=keys)
    router = Router(settings, ports, seed=1)
    guard = Guard(
        settings, memory.guard_ports(guard_ledger, nats, topology, keys=keys), fetch_wait_s=0.05
    )
    stop = asyncio.Event()
    running = [asyncio.create_task(router.run(stop)), asyncio.create_task(guard.run(stop))]
    try:
        yield Twins(topology, broker, nats, router, guard, channel)
    finally:
        stop.set()
        await asyncio.gather(*running)
        await guard_ledger.close()
        await router_ledger.close()


def failing(times: int, error: Callable[[], Exception], then: Any) -> tuple[Any, list[int]]:
    """A stand-in for `then` that raises `error()` the first `times` calls."""
    calls: list[int] = []

    async def stand_in(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= times:
            raise error()
        return await then(*args, **kwargs)

    return stand_in, calls


async def test_a_transient_failure_puts_the_job_back_until_it_goes_through(
    twins: Twins, monkeypatch: pytest.MonkeyPatch
) -> None:
    take, calls = failing(2, lambda: LedgerUnavailable("ledger restarting"), twins.router.take)
    monkeypatch.setattr(twins.router, "take", take)
    twins.submit()
    await eventually(lambda: len(calls) >= 3 and twins.settled(), what="the job taken at last")
    assert twins.broker.get(twins.topology.dead_letter_queue) is None


async def test_a_bug_is_retried_and_dead_lettered_by_the_delivery_limit(
    twins: Twins, monkeypatch: pytest.MonkeyPatch
) -> None:
    take, calls = failing(10**6, lambda: KeyError("a bug"), twins.router.take)
    monkeypatch.setattr(twins.router, "take", take)
    twins.submit()
    dead = await eventually(
        lambda: twins.broker.get(twins.topology.dead_letter_queue), what="the job dead-lettered"
    )
    assert len(calls) > 1, "retried before it was parked"
    assert REASON_HEADER not in dead.headers, "parked by the queue's limit, not by the router"


@pytest.mark.parametrize(
    "error",
    [
        lambda: SetupIncomplete("the ledger lacks table jobs; run `cortensor db upgrade`"),
        lambda: PermanentError("cannot be done"),
        lambda: BadInput("no job in particular"),
    ],
    ids=["setup", "permanent", "bad-input"],
)
async def test_a_failure_no_retry_fixes_parks_the_job_with_its_reason_at_once(
    twins: Twins, monkeypatch: pytest.MonkeyPatch, error: Callable[[], Exception]
) -> None:
    take, calls = failing(10**6, error, twins.router.take)
    monkeypatch.setattr(twins.router, "take", take)
    job = twins.submit()
    dead = await eventually(
        lambda: twins.broker.get(twins.topology.dead_letter_queue), what="the job dead-lettered"
    )
    assert dead.message_id == str(job.job_id)
    assert dead.headers[REASON_HEADER] == f"{type(error()).__name__}: {error()}"
    assert len(calls) == 1
    await eventually(twins.settled, what="the job acked once parked")


def result_for(twins: Twins) -> tuple[str, bytes, dict[str, str]]:
    """A result of node n1, signed, for a job the ledger does not know."""
    job_id = uuid.uuid4()
    result = InferenceResult(
        assignment_id=uuid.uuid4(),
        job_id=job_id,
        node_id="n1",
        model="all-MiniLM-L6-v2",
        hw_class="cpu-int8",
        precision="int8",
        embeddings=[[1.0, 0.0]],
    )
    data = result.model_dump_json().encode()
    subject = twins.topology.results_subject(str(job_id), node_id="n1")
    return subject, data, signed_by("n1", data)


async def test_the_guard_retries_results_it_could_not_store(
    twins: Twins, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = twins.guard.ledger
    take, calls = failing(2, lambda: LedgerUnavailable("ledger restarting"), ledger.take_results)
    monkeypatch.setattr(ledger, "take_results", take)
    subject, data, headers = result_for(twins)
    await twins.nats.publish(subject, data, msg_id="r1", headers=headers)
    await eventually(lambda: len(calls) >= 3, what="the result delivered again until stored")


async def test_the_guard_stops_delivering_results_no_retry_can_store(
    twins: Twins, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = twins.guard.ledger
    take, calls = failing(10**6, lambda: PermanentError("never"), ledger.take_results)
    monkeypatch.setattr(ledger, "take_results", take)
    subject, data, headers = result_for(twins)
    await twins.nats.publish(subject, data, msg_id="r2", headers=headers)
    await eventually(lambda: calls, what="the result handled")
    await asyncio.sleep(0.3)  # time for redeliveries that must not come
    assert len(calls) == 1


async def test_the_guard_retries_results_while_node_keys_cannot_be_read(
    twins: Twins, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = twins.guard.keyring.book
    load, loads = failing(2, lambda: LedgerUnavailable("ledger restarting"), book.bound_keys)
    monkeypatch.setattr(book, "bound_keys", load)
    take, taken = failing(0, lambda: PermanentError("never"), twins.guard.ledger.take_results)
    monkeypatch.setattr(twins.guard.ledger, "take_results", take)
    subject, data, headers = result_for(twins)
    await twins.nats.publish(subject, data, msg_id="r3", headers=headers)
    await eventually(lambda: taken, what="the result checked once the keys could be read")
    assert len(loads) == 3, "delivered again after each failed read, never refused"
