"""How many parts the router cuts speech into for the fleet at hand (parts.speech_parts)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.audio import plan_chunks
from cortensor.protocol.parts import SpeechCost, speech_parts, speech_split
from cortensor.protocol.planning import Backlog, parallel
from tests.unit import test_audio_deadlines as deadlines
from tests.unit.test_audio_deadlines import MAX_AUDIO_S, NOW, Span, fleet, late, route, speech

BATCHED = SpeechCost(batch=8)
SEQUENTIAL = SpeechCost(batch=1)


def parts(audio_s: float, slots: int, cost: SpeechCost = BATCHED) -> int:
    return speech_parts(
        audio_s, slots, cost=cost, min_part_s=15.0, max_part_s=cost.window_s * max(1, cost.batch)
    )


def test_a_lone_batching_node_gets_the_benchmark_file_whole() -> None:
    # 79 s on one node: one part decoded as three windows at once, not three 30 s chunks
    # queued on the same node.
    assert parts(79.2, 1) == 1


def test_two_nodes_get_one_part_each_not_two_chunks_each() -> None:
    assert parts(79.2, 2) == 2
    # Nodes that decode one window at a time keep parts within one window: two each.
    assert parts(79.2, 2, SEQUENTIAL) == 4


def test_more_nodes_share_a_file_down_to_the_shortest_part() -> None:
    assert parts(79.2, 3) == 3
    assert parts(79.2, 4) == 4
    assert parts(79.2, 16) == math.floor(79.2 / 15.0)


def test_one_window_of_audio_is_never_split() -> None:
    assert parts(29.0, 8) == 1


def test_a_long_file_on_one_node_is_cut_at_the_longest_part() -> None:
    assert parts(900.0, 1) == math.ceil(900.0 / 240.0)
    assert parts(900.0, 1, SEQUENTIAL) == math.ceil(900.0 / 30.0)


def test_batching_makes_a_long_part_cheaper_than_its_windows_apart() -> None:
    assert BATCHED.part_s(79.2) < 3 * BATCHED.part_s(79.2 / 3)
    # One window at a time, a part costs its windows' cost plus one part's overhead.
    assert SEQUENTIAL.part_s(79.2) == pytest.approx(
        3 * SEQUENTIAL.part_s(79.2 / 3) - 2 * SEQUENTIAL.per_part_s
    )


def test_bad_lengths_are_refused() -> None:
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="audio_s"):
            parts(bad, 2)


def test_speech_split_applies_the_settings() -> None:
    split = speech_split(2, batch=8, window_s=30.0, min_part_s=15.0)
    assert split(79.2) == 2
    assert speech_split(1, batch=0, window_s=30.0, min_part_s=15.0)(79.2) == 3


lengths = st.floats(min_value=0.5, max_value=900.0, allow_nan=False)
fleets = st.integers(min_value=1, max_value=64)
batches = st.integers(min_value=0, max_value=16)


@given(lengths, fleets, batches)
def test_the_count_is_within_bounds(audio_s: float, slots: int, batch: int) -> None:
    cost = SpeechCost(batch=batch)
    longest = cost.window_s * max(1, batch)
    k = parts(audio_s, slots, cost)
    assert k >= max(1, math.ceil(audio_s / longest - 1e-9))
    assert k == 1 or audio_s / k >= 15.0 or k == math.ceil(audio_s / longest - 1e-9)


@given(lengths, fleets, batches)
def test_no_other_count_in_bounds_finishes_sooner(audio_s: float, slots: int, batch: int) -> None:
    cost = SpeechCost(batch=batch)
    longest = cost.window_s * max(1, batch)
    k = parts(audio_s, slots, cost)
    least = max(1, math.ceil(audio_s / longest - 1e-9))
    most = max(least, math.floor(audio_s / 15.0))
    best = cost.finish_s(audio_s, k, slots)
    for other in range(least, most + 1):
        assert best <= cost.finish_s(audio_s, other, slots) + 1e-9


@given(lengths, fleets, batches)
def test_more_nodes_never_finish_later(audio_s: float, slots: int, batch: int) -> None:
    cost = SpeechCost(batch=batch)
    k, more = parts(audio_s, slots, cost), parts(audio_s, slots + 1, cost)
    assert cost.finish_s(audio_s, more, slots + 1) <= cost.finish_s(audio_s, k, slots) + 1e-9


@pytest.mark.parametrize(("nodes", "redundancy"), [(1, 1), (3, 3), (4, 3), (6, 3), (5, 2), (3, 1)])
@pytest.mark.parametrize("batch", [8, 0])
def test_every_part_of_a_900_s_file_cut_this_way_is_done_in_time(
    nodes: int, redundancy: int, batch: int
) -> None:
    """The rule of tests/unit/test_audio_deadlines.py, with the router's count: nodes at
    the recorded one-window-at-a-time speed (the slowest, whatever the router assumed)
    still finish every part, long ones included, within its deadline."""
    split = speech_split(parallel(nodes, redundancy), batch=batch, window_s=30.0, min_part_s=15.0)
    count = split(MAX_AUDIO_S)
    cuts = plan_chunks(
        MAX_AUDIO_S, speech(MAX_AUDIO_S, random.Random(0)), MAX_AUDIO_S / count, count
    )
    units = deadlines.split([Span(a, b) for a, b in cuts], redundancy, NOW)
    plans = route(units, fleet(nodes), Backlog(), NOW)
    assert late(plans, NOW) == []
