"""The outage arithmetic (cortensor.protocol.outages): who is excused, which deadlines
move, and what an observer records."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.adapters.memory.tables import ManualClock
from cortensor.protocol.outages import (
    EXTENSION_S,
    HOLD_MAX_S,
    MIN_WINDOW_S,
    Outage,
    OutageWatch,
    excused,
    extended,
    judging_horizon,
    renewed,
)

T0 = datetime(2026, 12, 3, tzinfo=UTC)
seconds = st.integers(min_value=0, max_value=600_000).map(lambda ms: ms / 1000)
"""Whole milliseconds: exact in a datetime, so the rule over numbers compares exactly."""


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


@st.composite
def outages(draw: st.DrawFn) -> Outage:
    start = draw(seconds)
    length = draw(st.integers(min_value=0, max_value=60_000)) / 1000
    return Outage(
        draw(st.sampled_from(["postgres", "rabbitmq", "nats"])), at(start), at(start + length)
    )


@given(
    sent=seconds,
    length=st.integers(0, 60).map(float),
    windows=st.lists(outages()),
    grace=st.integers(0, 30).map(float),
)
def test_excused_exactly_when_a_window_meets_an_outage_stretched_by_the_grace(
    sent: float, length: float, windows: list[Outage], grace: float
) -> None:
    """Checked against the same rule written over plain numbers."""
    deadline = sent + length
    expected = any(
        (o.started_at - T0).total_seconds() <= deadline
        and sent <= (o.ended_at - T0).total_seconds() + grace
        for o in windows
    )
    assert excused(at(sent), at(deadline), windows, grace_s=grace) is expected


@given(deadline=seconds, windows=st.lists(outages()), grace=st.integers(0, 30).map(float))
def test_an_assignment_never_confirmed_sent_is_excused(
    deadline: float, windows: list[Outage], grace: float
) -> None:
    assert excused(None, at(deadline), windows, grace_s=grace)


@given(sent=seconds, length=st.integers(0, 60).map(float), grace=st.integers(0, 30).map(float))
def test_without_outages_a_missed_deadline_is_the_nodes(
    sent: float, length: float, grace: float
) -> None:
    """A node simply slow on a healthy network is charged."""
    assert not excused(at(sent), at(sent + length), [], grace_s=grace)


@given(deadline=seconds, windows=st.lists(outages()), grace=st.integers(0, 30).map(float))
def test_a_deadline_moves_by_the_extension_only_inside_an_outage(
    deadline: float, windows: list[Outage], grace: float
) -> None:
    later = extended(at(deadline), windows, grace_s=grace)
    inside = any(o.overlaps(at(deadline), at(deadline), grace_s=grace) for o in windows)
    assert later == (at(deadline + EXTENSION_S) if inside else None)


@given(created=seconds, window=st.floats(0.1, 60), job_left=st.floats(0, 120), now=seconds)
def test_a_renewed_window_is_as_long_and_never_past_the_jobs_deadline(
    created: float, window: float, job_left: float, now: float
) -> None:
    job_deadline = at(now + job_left)
    new = renewed(at(created), at(created + window), job_deadline, at(now))
    assert new <= job_deadline
    assert new == min(
        job_deadline,
        at(now) + max(at(created + window) - at(created), timedelta(seconds=MIN_WINDOW_S)),
    )


def test_an_outage_is_one_of_the_watched_servers_and_ends_after_it_starts() -> None:
    with pytest.raises(ValueError, match="redis"):
        Outage("redis", at(0), at(1))
    with pytest.raises(ValueError, match="after it starts"):
        Outage("nats", at(2), at(1))


def test_a_watch_reports_an_open_window_then_its_end_once() -> None:
    clock = ManualClock(T0)
    watch = OutageWatch(clock)
    assert watch.pending() == []
    assert watch.restored("nats") is None
    watch.lost("nats")
    clock.advance(3)
    watch.lost("nats")  # told again by another caller: still the first start
    [open_window] = watch.pending()
    assert open_window == Outage("nats", T0, at(3), ongoing=True)
    watch.recorded([open_window])
    assert watch.pending() == [Outage("nats", T0, at(3), ongoing=True)]  # still down
    clock.advance(12)
    ended = watch.restored("nats")
    assert ended == Outage("nats", T0, at(15))
    assert watch.down == frozenset()
    assert watch.pending() == [ended]
    watch.recorded([ended])
    assert watch.pending() == []


@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["lost", "restored"]),
            st.sampled_from(["postgres", "nats"]),
            st.floats(0, 10),
        ),
        max_size=30,
    )
)
def test_a_watchs_windows_never_overlap_per_server_and_cover_every_down_moment(
    events: list[tuple[str, str, float]],
) -> None:
    clock = ManualClock(T0)
    watch = OutageWatch(clock)
    down_at: dict[str, list[datetime]] = {"postgres": [], "nats": []}
    for kind, server, step in events:
        clock.advance(step)
        if kind == "lost":
            watch.lost(server)
        else:
            watch.restored(server)
        if server in watch.down:
            down_at[server].append(clock())
    windows = watch.pending()
    for server, moments in down_at.items():
        mine = sorted((o for o in windows if o.server == server), key=lambda o: o.started_at)
        for a, b in itertools.pairwise(mine):
            assert a.ended_at <= b.started_at
        for moment in moments:
            assert any(o.started_at <= moment <= o.ended_at for o in mine)


# -- results stored before a deadline and not yet taken --------------------------------


@given(now=seconds, oldest=st.none() | seconds)
def test_the_horizon_is_the_oldest_untaken_result_within_the_hold_and_never_past_now(
    now: float, oldest: float | None
) -> None:
    horizon = judging_horizon(None if oldest is None else at(oldest), at(now))
    assert horizon <= at(now)
    assert horizon >= at(now) - timedelta(seconds=HOLD_MAX_S)
    if oldest is None or oldest >= now:
        assert horizon == at(now)  # nothing waits (or nothing older than now): judge all
    elif now - oldest <= HOLD_MAX_S:
        assert horizon == at(oldest)  # a deadline after it may have its result in the stream
    else:
        assert horizon == at(now) - timedelta(seconds=HOLD_MAX_S)


def test_a_deadline_after_a_result_held_by_a_dead_guard_is_not_judged_until_it_is_taken() -> None:
    stored, deadline = at(10), at(11)  # stored just before the deadline, then the guard died
    for now in (at(12), at(25)):
        assert not deadline < judging_horizon(stored, now)
    assert deadline < judging_horizon(None, at(25))  # taken: judged (with its result counted)
