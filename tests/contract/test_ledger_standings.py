"""Standings after the same reputation events: PostgreSQL's trigger (`cortensor_fold`)
and the twin's fold (reputation.record) both give the fold the core defines.

Each seed draws a few nodes of different habits (honest, wrong one time in three, late
half the time, probed on probation, probed after a quarantine) and a few hundred events
on jobs of two models, probes among them. The events are appended in order through the
ledger (one transaction each on PostgreSQL, as verdicts write them). Each side's record
of them (kind, probe, in order) must be what was sent, and every node's standing,
overall and per model, must be `reputation.fold` over that record at the times the side
stamped (transaction times on PostgreSQL, the twin's clock on the twin). On the twin
alone, hypothesis draws any events, a second event per assignment among them (dropped),
at any times.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import cast
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortensor.adapters.memory import ManualClock, MemoryLedger
from cortensor.adapters.memory.tables import JobRow, NodeRow
from cortensor.protocol.reputation import EventKind, Standing, fold
from cortensor.protocol.units import NewJob, OpenJob, assignments_for
from cortensor.schemas import utcnow
from tests.contract.sides import LedgerSide
from tests.contract.test_ledger_contract import HW, MODEL, enrol

OTHER_MODEL = "distilbert-sst2"

HABITS: dict[str, tuple[float, float, float, float]] = {
    # P(agreed), P(disagreed), P(timed_out), P(probe)
    "honest": (0.97, 0.01, 0.02, 0.1),
    "cheat": (0.6, 0.35, 0.05, 0.1),
    "late": (0.45, 0.0, 0.55, 0.1),
    "probed": (0.8, 0.1, 0.1, 0.8),
}


def draw(rng: random.Random, habit: str) -> tuple[EventKind, bool]:
    agreed, disagreed, _, probe = HABITS[habit]
    x = rng.random()
    kind: EventKind = (
        "agreed" if x < agreed else "disagreed" if x < agreed + disagreed else ("timed_out")
    )
    return kind, rng.random() < probe


def one_job(model: str, probe: bool) -> OpenJob:
    return OpenJob(
        job_id=uuid.uuid4(),
        task="embed",
        model=model,
        redundancy=1,
        hw_class=HW,
        inputs=["x"],
        deadline_at=utcnow() + timedelta(seconds=60),
        taken=frozenset(),
        probe=probe,
    )


def close(ours: Standing | None, expected: Standing) -> None:
    """Equal, the doubles to within rounding (PL/pgSQL and Python order some operations
    differently)."""
    assert ours is not None
    exact = ("observations", "streak", "probe_streak", "offences", "trust")
    assert {f: getattr(ours, f) for f in exact} == {f: getattr(expected, f) for f in exact}
    for f in ("agreed", "disagreed", "timed_out", "suspicion", "lateness", "at"):
        assert getattr(ours, f) == pytest.approx(getattr(expected, f), rel=1e-12, abs=1e-12), f


async def recorded(
    side: LedgerSide, node: str, model: str = ""
) -> list[tuple[EventKind, float, bool]]:
    return [(cast(EventKind, k), at, p) for k, at, p in await side.history(node, model)]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_standings_after_the_same_events_are_the_cores_fold(
    ledger_side: LedgerSide, seed: int
) -> None:
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    habit_of = {f"st-{tag}-{h}-{i}": h for i, h in enumerate([*HABITS, "cheat", "late"])}
    nodes = list(habit_of)
    await enrol(ledger_side, nodes)
    planned: list[tuple[str, UUID, UUID, EventKind, bool, str]] = []
    jobs: list[NewJob] = []
    for _ in range(300):
        node = rng.choice(nodes)
        kind, probe = draw(rng, habit_of[node])
        model = rng.choice([MODEL, OTHER_MODEL])
        spec = one_job(model, probe)
        [made] = assignments_for(spec, [(node, HW)], spec.deadline_at)
        jobs.append(NewJob(spec, utcnow(), "running", [made]))
        planned.append((node, spec.job_id, made.assignment_id, kind, probe, model))
    await ledger_side.router.open_jobs(jobs)
    for node, job_id, assignment_id, kind, _, _ in planned:
        await ledger_side.add_events(job_id, [(node, assignment_id, kind)])

    seen_trust: set[str] = set()
    for node in nodes:
        history = await recorded(ledger_side, node)
        sent = [(kind, probe) for n, _, _, kind, probe, _ in planned if n == node]
        assert [(k, p) for k, _, p in history] == sent
        expected = fold(history)
        close(await ledger_side.standing(node), expected)
        seen_trust.add(expected.trust)
        for model in (MODEL, OTHER_MODEL):
            of_model = await recorded(ledger_side, node, model)
            assert len(of_model) == sum(n == node and m == model for n, *_, m in planned)
            if of_model:
                close(await ledger_side.standing(node, model), fold(of_model))
        stats = (await ledger_side.router.node_stats())[node]
        assert stats.score == pytest.approx(expected.score, rel=1e-6)
        assert (stats.trust, stats.offences) == (expected.trust, expected.offences)
    # The draws reach more than one trust state, so the transitions are compared too.
    assert len(seen_trust) >= 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.sampled_from(["agreed", "disagreed", "timed_out"]),
            st.booleans(),
            st.sampled_from([MODEL, OTHER_MODEL]),
            st.floats(0, 3 * 24 * 3600.0),
        ),
        max_size=80,
    )
)
def test_the_twins_standings_are_the_fold_of_any_events(
    draws: list[tuple[int, EventKind, bool, str, float]],
) -> None:
    clock = ManualClock()
    tables = MemoryLedger(clock).tables
    nodes = [f"h-{i}" for i in range(3)]
    for node in nodes:
        tables.nodes[node] = NodeRow(None, clock())
    history: dict[tuple[str, str], list[tuple[EventKind, float, bool]]] = {}
    for i, (n, kind, probe, model, gap) in enumerate(draws):
        spec = replace(one_job(model, probe), deadline_at=clock())
        [made] = assignments_for(spec, [(nodes[n], HW)], clock())
        tables.jobs[spec.job_id] = JobRow(spec, "running", clock(), clock(), 1, i)
        tables.insert_assignments([made])
        tables.add_events(spec.job_id, [(nodes[n], str(made.assignment_id), kind)])
        tables.add_events(spec.job_id, [(nodes[n], str(made.assignment_id), "agreed")])
        at = clock().timestamp()
        for key in ((nodes[n], ""), (nodes[n], model)):
            history.setdefault(key, []).append((kind, at, probe))
        clock.advance(gap)
    assert set(tables.standings) == set(history)
    for key, events in history.items():
        assert tables.standings[key] == fold(events)
