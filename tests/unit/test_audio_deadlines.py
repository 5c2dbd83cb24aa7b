"""A maximum-size transcription (900 s, Settings.max_audio_s) is split so that honest
nodes meet their deadlines (docs/design.md, Overload): every part's assignment deadline
leaves its node the time of the work sent to it before, so a node that runs its parts
one after another at the measured speed of Whisper finishes each in time.

The speed is the one LIMITS.md and docs/design.md record for whisper-base int8 on one
thread, about 0.8 s per 30 s window plus 0.075 s per second of audio, slowed down
SLOWDOWN times for nodes that share the cores of their host (three single-threaded nodes
on two cores, with room to spare). At three times slower, three nodes at redundancy 3
need about 310 s for the whole file: a user who wants it done on such a fleet gives it
a longer deadline than the 300 s default (at most 600 s).
tests/integration/test_audio_split.py measures the speed on this machine and checks the
parts of a real 900 s file against it.
"""

from __future__ import annotations

import base64
import math
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortensor.audio import chunk_count, plan_chunks
from cortensor.protocol.parts import split_job
from cortensor.protocol.placement import NodeView
from cortensor.protocol.planning import Backlog, Plan, Timing, parallel, plan
from cortensor.protocol.units import OpenJob
from cortensor.schemas import JobRequest

MODEL = "whisper-base"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
TIMING = Timing(assignment_s=10.0, per_audio_s=0.5)  # the settings' defaults
MAX_AUDIO_S = 900.0
DEADLINE_S = 300.0  # `cortensor submit transcribe`'s default
WINDOW_COST_S = 0.8
COST_PER_AUDIO_S = 0.075
SLOWDOWN = 2.0


def cost_s(audio_s: float, slowdown: float = SLOWDOWN) -> float:
    """Seconds an honest node takes for one part (a window or more)."""
    windows = max(1, math.ceil(audio_s / 30.0))  # Whisper pads each window to 30 s
    return (WINDOW_COST_S * windows + COST_PER_AUDIO_S * audio_s) * slowdown


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float
    wav: bytes = b""


def speech(duration: float, rng: random.Random) -> list[tuple[float, float]]:
    """Sentences of 2-6 s with pauses of 0.3-1.5 s."""
    spans, t = [], rng.uniform(0, 1)
    while t < duration - 1:
        end = min(t + rng.uniform(2, 6), duration)
        spans.append((t, end))
        t = end + rng.uniform(0.3, 1.5)
    return spans


def fleet(size: int) -> list[NodeView]:
    return [
        NodeView(
            node_id=f"n{i}",
            hw_class="cpu-int8",
            models=frozenset({MODEL}),
            last_seen=0.0,
            score=0.9,
            capacity=4,
            streaks={MODEL: 1000},
        )
        for i in range(size)
    ]


def split(spans: list[Span], redundancy: int, now: datetime) -> list[OpenJob]:
    """The units the router makes of a transcribe job cut into `spans` (split_job)."""
    request = JobRequest(
        task="transcribe",
        audio=base64.b64encode(b"RIFF....WAVE").decode(),
        deadline_s=DEADLINE_S,
        redundancy=redundancy,
    )
    deadline_at = now + timedelta(seconds=DEADLINE_S)
    _, units = split_job(request, deadline_at, shard_inputs=32, chunks=spans)
    return units


def parts(duration: float, nodes: int, redundancy: int, seed: int = 0) -> list[OpenJob]:
    """The units of a job of `duration` seconds of speech, cut as the router cuts it."""
    rng = random.Random(seed)
    count = chunk_count(
        duration, chunk_s=30.0, min_chunk_s=15.0, parallel=parallel(nodes, redundancy)
    )
    cuts = plan_chunks(duration, speech(duration, rng), max(30.0, duration / count), count)
    return split([Span(a, b) for a, b in cuts], redundancy, NOW)


def route(
    units: list[OpenJob], pool: list[NodeView], backlog: Backlog, now: datetime, seed: int = 0
) -> list[Plan]:
    """Plans every unit as Router.open_and_send does, with Router.plan's backlog."""
    rng, spread, plans = random.Random(seed), frozenset[str](), []
    for unit in units:
        ahead = backlog.ahead([n.node_id for n in pool], now)
        planned = plan(
            unit,
            unit.redundancy,
            pool=pool,
            rng=rng,
            now=now,
            timing=TIMING,
            spread=spread,
            ahead=ahead,
        )
        assert isinstance(planned, Plan), planned
        backlog.add(planned.nodes, TIMING.work_s(unit.params), planned.deadline_at)
        spread = planned.spread
        plans.append(planned)
    return plans


def late(
    plans: list[Plan],
    now: datetime,
    slowdown: float = SLOWDOWN,
    cost: Callable[[float], float] | None = None,
) -> list[str]:
    """Each node runs its replicas in the order they were sent, each part taking
    `cost(seconds of audio)` (by default `cost_s` at `slowdown`); the ones it finishes
    after their deadline."""
    busy_until: dict[str, float] = defaultdict(float)
    missed = []
    for p in plans:
        audio_s = float(p.job.params["end_s"]) - float(p.job.params["start_s"])
        for node in p.nodes:
            busy_until[node] += cost_s(audio_s, slowdown) if cost is None else cost(audio_s)
            if busy_until[node] > (p.deadline_at - now).total_seconds():
                missed.append(f"part {p.job.part} on {node} done at {busy_until[node]:.0f} s")
    return missed


@pytest.mark.parametrize(("nodes", "redundancy"), [(3, 3), (4, 3), (6, 3), (9, 3), (5, 2), (3, 1)])
def test_every_part_of_a_900_s_file_is_done_within_its_deadline(
    nodes: int, redundancy: int
) -> None:
    units = parts(MAX_AUDIO_S, nodes, redundancy)
    assert len(units) >= MAX_AUDIO_S / 30.0
    # Cuts go to pauses: a part may run a few seconds past chunk_s (audio.plan_chunks).
    assert all(float(u.params["end_s"]) - float(u.params["start_s"]) <= 45.0 for u in units)
    plans = route(units, fleet(nodes), Backlog(), NOW)
    assert late(plans, NOW) == []
    # Without the backlog, every part had the time of one: the later ones were missed.
    flat = [
        Plan(p.job, p.targets, TIMING.deadline(p.job, NOW), p.redundancy, p.spread) for p in plans
    ]
    assert late(flat, NOW) != []


def test_the_whole_file_fits_the_default_deadline_on_three_nodes() -> None:
    """Three nodes each running all 30 parts (redundancy 3) finish before the job's
    deadline; no part's deadline is cut by the job's."""
    plans = route(parts(MAX_AUDIO_S, 3, 3), fleet(3), Backlog(), NOW)
    total = sum(
        cost_s(float(p.job.params["end_s"]) - float(p.job.params["start_s"])) for p in plans
    )
    assert total < DEADLINE_S
    assert max(p.deadline_at for p in plans) <= NOW + timedelta(seconds=DEADLINE_S)


def test_a_check_sent_to_a_node_busy_with_parts_waits_its_turn_in_time() -> None:
    """An `auto` job's checkers go out once its leaders answer: a checker lands behind
    the parts its node still holds, and its deadline counts them."""
    pool, backlog = fleet(3), Backlog()
    units = parts(MAX_AUDIO_S, 3, 1)
    leaders = route(units, pool, backlog, NOW)
    first = leaders[0]
    done_at = cost_s(float(first.job.params["end_s"]) - float(first.job.params["start_s"]))
    later = NOW + timedelta(seconds=done_at)
    checker_node = next(n for n in pool if n.node_id not in first.nodes)
    check = plan(
        first.job,
        1,
        pool=[checker_node],
        rng=random.Random(1),
        now=later,
        timing=TIMING,
        ahead=backlog.ahead([checker_node.node_id], later),
    )
    assert isinstance(check, Plan)
    # What the checker's node still has to run before the check, at the honest speed.
    queued = [p for p in leaders if checker_node.node_id in p.nodes]
    remaining = (
        sum(cost_s(float(p.job.params["end_s"]) - float(p.job.params["start_s"])) for p in queued)
        - done_at
    )
    own = cost_s(float(first.job.params["end_s"]) - float(first.job.params["start_s"]))
    assert (check.deadline_at - later).total_seconds() >= remaining + own


@settings(max_examples=60, deadline=None)
@given(
    duration=st.floats(min_value=20.0, max_value=MAX_AUDIO_S),
    nodes=st.integers(min_value=1, max_value=12),
    redundancy=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_no_honest_node_misses_a_part_for_any_length_and_fleet(
    duration: float, nodes: int, redundancy: int, seed: int
) -> None:
    if nodes < redundancy:
        return
    plans = route(parts(duration, nodes, redundancy, seed), fleet(nodes), Backlog(), NOW, seed)
    assert late(plans, NOW) == []


def test_the_backlog_forgets_work_past_its_deadline() -> None:
    backlog = Backlog()
    for i in range(10_000):
        backlog.add([f"n{i % 7}"], 15.0, NOW + timedelta(seconds=i))
    backlog.prune(NOW + timedelta(seconds=9_990))
    assert len(backlog) == 9
    assert sum(backlog.ahead([f"n{i}" for i in range(7)], NOW).values()) == 9 * 15.0
    backlog.prune(NOW + timedelta(days=1))
    assert len(backlog) == 0
