"""The router's side of a full node queue (docs/design.md, Overload): the broker nacks
its publish (QueueFull); the node is busy, not gone, so it is kept and the task sent
again after a back-off; work that could not be sent before its deadline is never
recorded as sent, so its node is not charged for it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from cortensor.adapters.interfaces import QueueFull
from cortensor.schemas import Assignment, utcnow
from cortensor.services.router.service import Router
from cortensor.settings import Settings
from tests.unit.test_registry import beat


class Tasks:
    """A task publisher whose node queue is full for the first `full` publishes."""

    def __init__(self, full: int) -> None:
        self.full, self.tries, self.sent = full, 0, 0

    async def publish(
        self,
        hw_class: str,
        node_id: str,
        body: bytes,
        *,
        headers: Mapping[str, Any],
        message_id: str,
    ) -> None:
        self.tries += 1
        if self.tries <= self.full:
            raise QueueFull(f"node {node_id}'s queue is full")
        self.sent += 1


class Ledger:
    def __init__(self) -> None:
        self.marked: list[uuid.UUID] = []

    async def mark_sent(self, ids: list[uuid.UUID]) -> None:
        self.marked.extend(ids)


def router(tasks: Tasks, ledger: Ledger) -> Router:
    settings = Settings(credentials=None, retry_base_s=0.01, retry_cap_s=0.02)
    ports = SimpleNamespace(
        ledger=ledger,
        keys=None,
        jobs=None,
        tasks=tasks,
        signals=None,
        verdicts=None,
        outages=None,
        dead=None,
        results=None,
    )
    return Router(settings, ports)  # type: ignore[arg-type]


def assignments(n: int, seconds: float) -> list[Assignment]:
    return [
        Assignment(
            job_id=uuid.uuid4(),
            node_id="n1",
            task="embed",
            model="all-MiniLM-L6-v2",
            inputs=["a text"],
            hw_class="cpu-fp32",
            deadline_at=utcnow() + timedelta(seconds=seconds),
        )
        for _ in range(n)
    ]


async def test_a_full_node_queue_keeps_the_node_and_is_sent_again() -> None:
    tasks, ledger = Tasks(full=3), Ledger()
    r = router(tasks, ledger)
    r.registry.observe(beat("n1"), 0.0)
    batch = assignments(4, 30.0)
    await r.publish_assignments(batch)
    assert tasks.tries == 4
    assert tasks.sent == 1
    assert len(r.registry) == 1  # the node is kept
    assert ledger.marked == [a.assignment_id for a in batch]


async def test_work_that_finds_the_queue_full_until_its_deadline_is_not_the_nodes() -> None:
    tasks, ledger = Tasks(full=10**6), Ledger()
    r = router(tasks, ledger)
    r.registry.observe(beat("n1"), 0.0)
    await r.publish_assignments(assignments(2, 0.2))
    assert tasks.sent == 0
    assert tasks.tries >= 2  # tried again while there was time
    assert ledger.marked == []  # never recorded as sent: excused, sent again by the sweep
    assert len(r.registry) == 1
