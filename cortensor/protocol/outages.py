"""Server outages, and whom they excuse. Pure logic, the clock passed in.

A router or guard notes when it lost and regained PostgreSQL, RabbitMQ or NATS
(`OutageWatch`); the windows go to the ledger (table `outages`) once it is reachable. A
node cannot answer in time while a server between it and the guard is down, so a
deadline missed during an outage says nothing about the node:

- an assignment whose window (from when the router last had the broker confirm it, to
  its deadline) overlaps an outage is `excused`: given a new window and sent again
  rather than timed out and charged; one the broker never confirmed is excused too (the
  router stopped between its commit and its publish);
- a job whose deadline fell inside an outage gets `EXTENSION_S` more, once.

A result stored before its deadline is on time, whoever holds it: a guard that dies
with results fetched and not yet acked leaves them to come back after the consumer's
ack wait, and a guard that falls behind leaves them waiting. No deadline is judged
(timed out and charged, or decided without the result) until the guards have taken
every result stored before it (`judging_horizon`).

An outage's end is pushed out by a grace (`Settings.outage_grace_s`): the work queued
meanwhile still has to drain once the server is back. A window still open is recorded
with the last time its observer saw the server down, so that an observer that died
with its server down leaves a window that ends, not one that excuses everything after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

SERVERS = ("postgres", "rabbitmq", "nats")
"""The servers whose outages are watched and recorded."""

EXTENSION_S = 30.0
"""What a job whose deadline fell inside an outage gets on top of it, once."""

GRACE_S = 15.0
"""How long after an outage ends a missed deadline is still excused: the work queued
meanwhile drains, and the nodes' connections come back, within it."""

HOLD_MAX_S = 120.0
"""Longest a deadline waits for results stored before it that no guard has taken: a
result no guard can take (one delivered again and again) does not hold every decision
forever. Past it, a deadline is judged as if the results were not there."""

MIN_WINDOW_S = 10.0
"""Shortest window a renewed assignment gets (the default assignment timeout)."""


@dataclass(frozen=True, slots=True)
class Outage:
    """One observer's window of one server down."""

    server: str
    started_at: datetime
    ended_at: datetime
    """When the server came back; while it is still down, when it was last seen down."""
    ongoing: bool = False

    def __post_init__(self) -> None:
        if self.server not in SERVERS:
            raise ValueError(f"server {self.server!r} is not one of {', '.join(SERVERS)}")
        if self.ended_at < self.started_at:
            raise ValueError(
                f"an outage ends ({self.ended_at}) after it starts ({self.started_at})"
            )

    def overlaps(self, start: datetime, end: datetime, *, grace_s: float) -> bool:
        """Whether [start, end] meets this outage with its end pushed out by `grace_s`."""
        return self.started_at <= end and start <= self.ended_at + timedelta(seconds=grace_s)


def excused(
    sent_at: datetime | None, deadline_at: datetime, outages: Iterable[Outage], *, grace_s: float
) -> bool:
    """Whether an assignment that missed `deadline_at` is not its node's fault: the broker
    never confirmed it (`sent_at` None), or an outage overlapped its window."""
    if sent_at is None:
        return True
    return any(o.overlaps(sent_at, deadline_at, grace_s=grace_s) for o in outages)


def extended(
    deadline_at: datetime, outages: Iterable[Outage], *, grace_s: float
) -> datetime | None:
    """The later deadline of a job whose deadline fell inside an outage, or None."""
    if any(o.overlaps(deadline_at, deadline_at, grace_s=grace_s) for o in outages):
        return deadline_at + timedelta(seconds=EXTENSION_S)
    return None


def judging_horizon(oldest_untaken: datetime | None, now: datetime) -> datetime:
    """The time before which missed deadlines may be judged now: `now` when the guards
    have taken every stored result, else when the oldest untaken one was stored (a
    deadline after it may have its result in the stream), never more than HOLD_MAX_S
    back."""
    if oldest_untaken is None:
        return now
    return min(now, max(oldest_untaken, now - timedelta(seconds=HOLD_MAX_S)))


def renewed(
    created_at: datetime, deadline_at: datetime, job_deadline_at: datetime, now: datetime
) -> datetime:
    """The new deadline of an excused assignment: as long a window as it had (at least
    MIN_WINDOW_S), from now, never past its job's deadline."""
    window = max(deadline_at - created_at, timedelta(seconds=MIN_WINDOW_S))
    return min(job_deadline_at, now + window)


class OutageWatch:
    """What one process saw of its servers, as windows to record.

    `lost` and `restored` may be called any number of times (from connection callbacks
    and from failed calls alike): a server is down from the first `lost` to the next
    `restored`. `pending` lists what the ledger has not been told yet; `recorded` says
    it was told.
    """

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self._down: dict[str, datetime] = {}
        self._ended: list[Outage] = []

    @property
    def down(self) -> frozenset[str]:
        """The servers down now, as far as this process knows."""
        return frozenset(self._down)

    def lost(self, server: str) -> None:
        """The server could not be reached (a no-op while it is known to be down)."""
        if server not in SERVERS:
            raise ValueError(f"server {server!r} is not one of {', '.join(SERVERS)}")
        self._down.setdefault(server, self.clock())

    def restored(self, server: str) -> Outage | None:
        """The server answers again; returns the outage that ended, if one had begun."""
        started = self._down.pop(server, None)
        if started is None:
            return None
        outage = Outage(server, started, max(started, self.clock()))
        self._ended.append(outage)
        return outage

    def pending(self) -> list[Outage]:
        """Windows to record: those that ended, and those still open (up to now)."""
        now = self.clock()
        still = [Outage(s, t, max(t, now), ongoing=True) for s, t in self._down.items()]
        return [*self._ended, *still]

    def recorded(self, outages: Iterable[Outage]) -> None:
        """The ledger holds these windows: ended ones need not be written again."""
        done = {(o.server, o.started_at) for o in outages if not o.ongoing}
        self._ended = [o for o in self._ended if (o.server, o.started_at) not in done]
