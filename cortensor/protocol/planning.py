"""The router's plan for a job: how many replicas, on which nodes, until when, and what
becomes of a job no node can take. Pure logic: the clock (`now`) and the random source
are passed in, and nothing here records or sends anything, nor makes ids.

Hidden checks. An `auto` job's leader is drawn first and sent alone, whether adaptive
replication (cortensor.protocol.replication) lets it run alone or not: a checked job
only has its redundancy raised, and its checkers are planned once the leader's answer
is in (`replicas_due`); a leader that times out is replaced by another, alone. So at
the moment a leader answers, no other node holds its job, nothing about its assignment
differs, and no peer's result exists that it could see or copy: it cannot tell
whether it is checked.

Placement's newcomer rule (cortensor.protocol.placement): a leader is drawn with room
for no newcomer (`choose(..., newcomers=0)`), so it is an established node while one is
live; every other replica with `newcomer_room(redundancy, newcomers on the job)`, so
that newcomers never make a strict majority while established nodes are left. A leader
that timed out is replaced under the second rule (a plan does not know whether a job's
replicas have answered): a job of 2 may then be led by a newcomer, whose checker is then
established. The simulation (cortensor.tools.simulate) calls `newcomers_allowed` and
`checked_replicas` for the same decisions, the replacement leader included.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from cortensor.catalog import eligible_classes
from cortensor.errors import NoEligibleNodes
from cortensor.protocol.placement import NodeView, choose, established, newcomer_room
from cortensor.protocol.replication import REPLICAS, replicas
from cortensor.protocol.units import OpenJob
from cortensor.schemas import Verdict


class TimingSettings(Protocol):
    """The settings a Timing is made of (cortensor.settings.Settings)."""

    @property
    def assignment_timeout_s(self) -> float: ...
    @property
    def audio_timeout_factor(self) -> float: ...
    @property
    def token_timeout_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Timing:
    """How long a node has for one replica (Settings.assignment_timeout_s,
    Settings.audio_timeout_factor and Settings.token_timeout_s)."""

    assignment_s: float = 10.0
    per_audio_s: float = 0.5
    """Extra time per second of audio in the replica."""
    per_token_s: float = 0.05
    """Extra time per token a generate replica may have to decode."""

    @classmethod
    def of(cls, settings: TimingSettings) -> Timing:
        """The timing the settings give."""
        return cls(
            settings.assignment_timeout_s, settings.audio_timeout_factor, settings.token_timeout_s
        )

    def timeout_s(self, params: Mapping[str, Any]) -> float:
        """Seconds for one replica of a job with these params: longer for longer audio,
        and for more tokens to generate."""
        return self.assignment_s + self.work_s(params)

    def work_s(self, params: Mapping[str, Any]) -> float:
        """The share of `timeout_s` that grows with the work: what a part queued ahead
        of another on the same node adds to the later one's time (see `Backlog`)."""
        audio_s = float(params.get("end_s", 0.0)) - float(params.get("start_s", 0.0))
        answers = 1 if "roles" in params else int(params.get("inputs", 1))
        tokens = int(params.get("max_tokens", 0)) * answers
        return self.per_audio_s * audio_s + self.per_token_s * tokens

    def deadline(self, job: OpenJob, now: datetime, ahead_s: float = 0.0) -> datetime:
        """When a replica sent `now` times out: its own time, plus `ahead_s` for the work
        its node holds already (a node runs it first: see `Backlog`), never past the
        job's deadline. Every replica of every job gets it this way, leaders alone or
        checked alike."""
        seconds = self.timeout_s(job.params) + ahead_s
        return min(now + timedelta(seconds=seconds), job.deadline_at)

    def fits(self, job: OpenJob, now: datetime, ahead_s: float = 0.0) -> bool:
        """Whether a replica of `job` sent `now` to a node holding `ahead_s` seconds of
        work (see `Backlog`) still gets its whole time before the job's deadline, so that
        `deadline` need not cut it short. A node that holds nothing always fits: nothing
        of the network's is in the replica's way, and a job with little time left (a
        late re-route) is no better off elsewhere."""
        if ahead_s <= 0:
            return True
        return now + timedelta(seconds=self.timeout_s(job.params) + ahead_s) <= job.deadline_at


class Backlog:
    """The work (Timing.work_s) sent to each node, each share counted until its
    assignment's deadline: what a node may still have to run before the next replica
    sent to it. A node runs what it holds one after another, so a replica's deadline is
    pushed back by the most any of its nodes has ahead (`plan`'s `ahead`): a 900 s file
    cut into 30 parts on 3 nodes gives each node's last part the time of all 30, and a
    check sent to a node still busy with parts of its own the time of those, rather than
    the time of one part, which an honest node would miss. Probes count like any other
    replica (a 27 s transcription probe holds its node as a real one would), and a node
    whose queue would cut a new replica's time short is passed over while other nodes
    can take it (`Timing.fits`, `plan`).

    Work that finished early is still counted until its deadline: a deadline may be
    longer than needed, never shorter. It holds only work not yet past its deadline, so
    it does not grow with the nodes or jobs ever seen."""

    def __init__(self) -> None:
        self._work: dict[str, list[tuple[datetime, float]]] = {}

    def add(self, nodes: Iterable[str], work_s: float, until: datetime) -> None:
        """`work_s` seconds sent to each of `nodes`, due by `until`."""
        if work_s <= 0:
            return
        for node in nodes:
            self._work.setdefault(node, []).append((until, work_s))

    def ahead(self, nodes: Iterable[str], now: datetime) -> dict[str, float]:
        """The work each of `nodes` holds and whose deadline is after `now`."""
        out = {}
        for node in nodes:
            live = [(until, w) for until, w in self._work.get(node, ()) if until > now]
            if live:
                self._work[node] = live
                out[node] = sum(w for _, w in live)
            else:
                self._work.pop(node, None)
        return out

    def prune(self, now: datetime) -> None:
        """Drop every share past its deadline."""
        self.ahead(list(self._work), now)

    def __len__(self) -> int:
        return sum(len(v) for v in self._work.values())


@dataclass(frozen=True, slots=True)
class Plan:
    """The replicas to send for a job now: to which nodes, until when. The service turns
    it into Assignment messages (units.assignments_for), which carry their own ids."""

    job: OpenJob
    targets: tuple[tuple[str, str], ...]
    """(node id, hardware class) of each replica."""
    deadline_at: datetime
    """When every one of these replicas times out (Timing.deadline)."""
    redundancy: int
    """The job's redundancy once this plan is recorded. An `auto` job's first plan
    decides it (1 alone, more when checked) while sending only the leader."""
    spread: frozenset[str] = frozenset()
    """The nodes holding parts of the same split job, these included (pass it on to the
    plan of the next part)."""

    @property
    def nodes(self) -> list[str]:
        """The nodes this plan sends replicas to."""
        return [node for node, _ in self.targets]


def plan(
    job: OpenJob,
    needed: int,
    *,
    pool: Sequence[NodeView],
    rng: random.Random,
    now: datetime,
    timing: Timing,
    temperature: float = 1.0,
    spread: frozenset[str] = frozenset(),
    ahead: Mapping[str, float] | None = None,
) -> Plan | str:
    """`needed` more replicas of `job` on nodes of `pool`, or why there are none now.

    `ahead`: seconds of work each node holds already (`Backlog.ahead`); nodes whose
    work would cut a replica's time short (Timing.fits) are chosen only when too few
    others are left, and the replicas' deadline is pushed back by the most any chosen
    node has (see `Backlog`).

    `pool` holds the live nodes that may take a replica (cortensor.protocol.placement
    .candidates); nodes in `job.taken` are passed over. An `auto` job routed for the first
    time gets its leader only (see the module's note on hidden checks); its redundancy
    is what adaptive replication gives that leader, and it is planned only if enough
    nodes are there for its checks too, so that a checked job never starts without them.
    """
    if needed < 1:
        raise ValueError(f"needed must be at least 1, not {needed}")
    times = _Ahead(timing, ahead or {})
    if job.auto and not job.taken and needed == job.redundancy:
        return _plan_leader(job, pool, rng, now, times, temperature, spread)
    room = newcomers_allowed(job.redundancy, _newcomers_on(job, pool), leading=False)
    return _place(job, needed, pool, rng, now, times, temperature, spread, job.redundancy, room)


@dataclass(frozen=True, slots=True)
class _Ahead:
    """A Timing and the work already sent to each node, for one plan."""

    timing: Timing
    ahead: Mapping[str, float]

    def deadline(self, job: OpenJob, now: datetime, nodes: Sequence[str]) -> datetime:
        most = max((self.ahead.get(n, 0.0) for n in nodes), default=0.0)
        return self.timing.deadline(job, now, most)

    def fits(self, job: OpenJob, now: datetime, node: str) -> bool:
        return self.timing.fits(job, now, self.ahead.get(node, 0.0))


def one_class(classes: Sequence[str], pool: Sequence[NodeView]) -> str | None:
    """The one hardware class, of `classes`, that the replicas of a job compared token for
    token should all run on: the class with the most nodes in `pool` (the first of
    `classes` on a tie), or None when `pool` holds none of them.

    Greedy decoding agrees token for token only within one build; across precisions the
    comparator can tell only an answer to something else (docs/generation.md). A generate
    job open to several classes is therefore pinned to one before it is recorded."""
    counts = Counter(view.hw_class for view in pool)
    found = [c for c in classes if counts[c]]
    return max(found, key=lambda c: counts[c], default=None)


def newcomers_allowed(redundancy: int, newcomers: int, *, leading: bool) -> int:
    """How many newcomers the next replicas of a job may take while established nodes
    are left: none for its leader, else what `newcomer_room` leaves beside the
    `newcomers` already on it."""
    return 0 if leading else newcomer_room(redundancy, newcomers)


def checked_replicas(streak: int, offences: int, rng: random.Random) -> int:
    """The redundancy of an `auto` job led by a node with this streak (for the job's
    model) and these offences: adaptive replication's `replicas`."""
    return replicas(streak, rng, offences=offences)


def _newcomers_on(job: OpenJob, pool: Sequence[NodeView]) -> int:
    """Newcomers among the nodes that hold or held a replica of `job`. A node no longer
    in the pool (gone, or no longer active) cannot be vouched for, and counts as one."""
    if not job.taken:
        return 0
    views = {n.node_id: n for n in pool}
    return sum(
        1 for node in job.taken if node not in views or not established(views[node], job.model)
    )


def _plan_leader(
    job: OpenJob,
    pool: Sequence[NodeView],
    rng: random.Random,
    now: datetime,
    timing: _Ahead,
    temperature: float,
    spread: frozenset[str],
) -> Plan | str:
    room = newcomers_allowed(1, 0, leading=True)
    first = _place(job, 1, pool, rng, now, timing, temperature, spread, 1, room)
    if isinstance(first, str):
        return first
    leader = next(n for n in pool if n.node_id == first.nodes[0])
    k = checked_replicas(int(leader.streaks.get(job.model, 0)), leader.offences, rng)
    if k > 1 and len(_eligible(job, pool)) < k:
        return _short(job, k, len(_eligible(job, pool)))
    return replace(first, redundancy=k)


def _eligible(job: OpenJob, pool: Sequence[NodeView]) -> list[NodeView]:
    if not job.taken:
        return list(pool)
    return [n for n in pool if n.node_id not in job.taken]


def _short(job: OpenJob, needed: int, available: int) -> str:
    classes = eligible_classes(job.hw_class)  # type: ignore[arg-type]
    return (
        f"needs {needed} more distinct live node(s) of class {' or '.join(classes)}"
        f" serving {job.model}; {available} available"
    )


def _place(
    job: OpenJob,
    needed: int,
    pool: Sequence[NodeView],
    rng: random.Random,
    now: datetime,
    timing: _Ahead,
    temperature: float,
    spread: frozenset[str],
    redundancy: int,
    room: int,
) -> Plan | str:
    """`needed` nodes for `job`, preferring those without a part of the same split job
    while enough of them remain; once every node has a part, a new round starts. At
    most `room` of them are newcomers while established nodes are left. A node whose
    queue (`timing.ahead`) leaves the replica less than its whole time before the job's
    deadline (Timing.fits) is taken only when too few others are left: the work the
    network sent it, probes included, would make an honest node late."""
    eligible = _eligible(job, pool)
    if spread:
        fresh = [n for n in eligible if n.node_id not in spread]
        if len(fresh) >= needed:
            eligible = fresh
        else:
            spread = frozenset()
    try:
        chosen = choose(
            eligible,
            needed,
            rng=rng,
            temperature=temperature,
            model=job.model,
            newcomers=room,
            # Only a node with work ahead can fail to fit: when none does, every node
            # fits, and the drawn order stands as it is.
            fits=(lambda n: timing.fits(job, now, n.node_id))
            if any(not timing.fits(job, now, node) for node in timing.ahead)
            else None,
        )
    except NoEligibleNodes:
        return _short(job, needed, len(eligible))
    targets = tuple((n.node_id, n.hw_class) for n in chosen)
    deadline_at = timing.deadline(job, now, _ids(chosen))
    return Plan(job, targets, deadline_at, redundancy, spread | set(_ids(chosen)))


def _ids(nodes: Sequence[NodeView]) -> list[str]:
    return [n.node_id for n in nodes]


def replicas_due(redundancy: int, *, auto: bool, live: int, answered: int) -> int:
    """How many more replicas a running job needs now.

    `live`: its replicas out or answered; `answered`: those answered. A job whose
    replicas number fewer than its redundancy (checks of an `auto` job, a split vote's
    extra replicas, the checks of a re-validated result, replacements of late replicas)
    gets the rest, except an `auto` job without an answer yet: its leader goes alone,
    and its checks wait for an answer. A leader that timed out is replaced by a new
    leader, alone too, so that no leader ever holds its job beside a peer.
    """
    if auto and answered == 0:
        return 0 if live > 0 else min(redundancy, 1)
    return max(redundancy - live, 0)


def parallel(live_nodes: int, redundancy: int | str) -> int:
    """How many parts of a split job can run at once on `live_nodes` eligible nodes, each
    part taking `redundancy` of them (REPLICAS for `auto`)."""
    per_part = REPLICAS if redundancy == "auto" else int(redundancy)
    return max(1, live_nodes // per_part)


def failed(job: OpenJob, why: str) -> Verdict:
    """The verdict on a job that found no nodes before its deadline."""
    return Verdict(
        job_id=job.job_id,
        owner=job.owner,
        status="failed",
        reason=f"no eligible nodes before the deadline: {why}",
        task=job.task,
        model=job.model,
        parent_id=job.parent_id,
        part=job.part,
    )


def waiting(job: OpenJob, now: datetime, planned: Plan | str) -> Plan | Verdict | None:
    """What becomes of a job waiting for nodes, given the plan made for it now: it is
    sent, it fails (its deadline has passed: replicas sent now could only time out), or
    it waits on (None)."""
    if job.deadline_at <= now:
        return failed(job, planned if isinstance(planned, str) else "no node took it in time")
    return None if isinstance(planned, str) else planned
