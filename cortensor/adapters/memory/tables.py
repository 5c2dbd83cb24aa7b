"""The ledger's tables in memory, and the writes routers and guards share: the twin of
cortensor.adapters.ledger.store, for `MemoryLedger` (cortensor.adapters.memory.ledger).

Rows hold data only. Reputation events are folded into standings by
cortensor.protocol.reputation.record as they are appended, which is what the ledger's
trigger (`cortensor_fold`, migration 0005) does in PostgreSQL. Time is read from a clock
given to the tables, never from the system directly, so that a test can move it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast, get_args
from uuid import UUID

from cortensor.protocol.adjudication import Event
from cortensor.protocol.consensus import Replica
from cortensor.protocol.outages import GRACE_S, Outage, excused
from cortensor.protocol.parts import DecidedPart, stitch
from cortensor.protocol.reputation import EventKind, Standing, record
from cortensor.protocol.units import OpenJob
from cortensor.schemas import OUTPUT_FIELD, TERMINAL_STATUSES, Assignment, Verdict, utcnow

Clock = Callable[[], datetime]
"""What the tables read the time from: an aware UTC datetime."""

DECIDED = frozenset(TERMINAL_STATUSES) - {"rejected"}
TERMINAL = frozenset(TERMINAL_STATUSES)
KINDS = frozenset(get_args(EventKind))


class ManualClock:
    """A clock that moves only when told to (`advance`), for tests."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move the clock on by `seconds`; returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward, not by {seconds} s")
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass(slots=True)
class NodeRow:
    """What a node last announced."""

    beat: Any
    last_seen: datetime


@dataclass(slots=True)
class JobRow:
    """A job: what it asks (`spec`, whose redundancy and deadline are the row's own) and
    where it stands."""

    spec: OpenJob
    status: str
    created_at: datetime
    deadline_at: datetime
    redundancy: int
    seq: int
    """Insertion order: ties of created_at resolve by it."""
    reason: str = ""
    decided_at: datetime | None = None
    unchecked: bool = False
    purged_at: datetime | None = None
    """When the retention period removed the job's content (GuardSide.purge_content)."""
    extended: bool = False
    """Its deadline fell inside an outage and was pushed back once."""


@dataclass(slots=True)
class AssignmentRow:
    """One replica of a job, held by one node."""

    assignment_id: UUID
    job_id: UUID
    node_id: str
    hw_class: str
    attempt: int
    deadline_at: datetime
    status: str = "assigned"
    finished_at: datetime | None = None
    created_at: datetime | None = None
    sent_at: datetime | None = None
    """When the broker confirmed it (RouterSide.mark_sent); None: not known sent."""


@dataclass(frozen=True, slots=True)
class ResultRow:
    """A node's result, stored once per result id and once per assignment."""

    result_id: UUID
    assignment_id: UUID
    job_id: UUID
    node_id: str
    precision: str
    output: Any
    error: str | None
    seq: int
    """Drawn as it was stored: PostgreSQL reads replicas in this order (results.seq)."""

    def replica(self) -> Replica:
        """The result as the core weighs it."""
        return Replica(
            node_id=self.node_id,
            result_id=str(self.result_id),
            precision=self.precision,
            output=self.output,
            error=self.error,
            assignment_id=str(self.assignment_id),
        )


@dataclass(slots=True)
class VerdictRow:
    """A job's verdict as stored: a verified output lives in its canonical result."""

    payload: Verdict
    created_at: datetime
    revision: int = 0
    published_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventRow:
    """One reputation event, with the job's model and probe flag (the trigger's copy)."""

    event_id: int
    node_id: str
    job_id: UUID
    assignment_id: UUID
    kind: EventKind
    model: str
    probe: bool
    at: float


@dataclass
class Tables:
    """Every table of the ledger, and the writes both sides make."""

    clock: Clock = utcnow
    nodes: dict[str, NodeRow] = field(default_factory=dict)
    jobs: dict[UUID, JobRow] = field(default_factory=dict)
    assignments: dict[UUID, AssignmentRow] = field(default_factory=dict)
    results: dict[UUID, ResultRow] = field(default_factory=dict)
    """By result id."""
    answered: dict[UUID, UUID] = field(default_factory=dict)
    """Assignment id -> the result id stored for it."""
    verdicts: dict[UUID, VerdictRow] = field(default_factory=dict)
    events: list[EventRow] = field(default_factory=list)
    charged: set[UUID] = field(default_factory=set)
    """Assignments with a reputation event: one each."""
    standings: dict[tuple[str, str], Standing] = field(default_factory=dict)
    """(node id, model) -> standing; model '' is the node's overall one."""
    listeners: list[Callable[[UUID], None]] = field(default_factory=list)
    outages: dict[tuple[str, str, datetime], Outage] = field(default_factory=dict)
    """(server, seen_by, started_at) -> the window recorded."""
    outage_grace_s: float = GRACE_S
    _seq: Iterator[int] = field(default_factory=itertools.count)

    def next_seq(self) -> int:
        """A number larger than every one handed out before."""
        return next(self._seq)

    # -- reads --------------------------------------------------------------------------

    def of_job(self, job_id: UUID) -> list[AssignmentRow]:
        """A job's assignments."""
        return [a for a in self.assignments.values() if a.job_id == job_id]

    def result_of(self, assignment_id: UUID) -> ResultRow | None:
        """The result stored for an assignment, if any."""
        result_id = self.answered.get(assignment_id)
        return None if result_id is None else self.results[result_id]

    def canonical(self, job_id: UUID) -> ResultRow | None:
        """The canonical result of a job's verdict, if it has one."""
        row = self.verdicts.get(job_id)
        if row is None or row.payload.canonical_result_id is None:
            return None
        return self.results.get(row.payload.canonical_result_id)

    def stored(self, job_id: UUID) -> Verdict | None:
        """A job's verdict, with its canonical output (store.verdict_of)."""
        row = self.verdicts.get(job_id)
        if row is None:
            return None
        result = self.canonical(job_id)
        if result is None or result.output is None:
            return row.payload
        return row.payload.with_output(result.output)

    def ordered(self, rows: Iterable[AssignmentRow]) -> list[AssignmentRow]:
        """Assignments in the order PostgreSQL reads replicas: by when their result was
        stored (those without one last), then by assignment id."""

        def key(a: AssignmentRow) -> tuple[bool, int, int]:
            result = self.result_of(a.assignment_id)
            return (result is None, 0 if result is None else result.seq, a.assignment_id.int)

        return sorted(rows, key=key)

    # -- writes shared by routers and guards (store.Ledger) ------------------------------

    def insert_assignments(self, made: Sequence[Assignment], *, attempt: int | None = None) -> None:
        """Record assignments, each to a recorded node; a node holds at most one replica
        of a job."""
        held = {(a.job_id, a.node_id) for a in self.assignments.values()}
        for a in made:
            if a.node_id not in self.nodes:
                raise ValueError(f"assignment {a.assignment_id}: node {a.node_id} is unknown")
            if a.assignment_id in self.assignments or (a.job_id, a.node_id) in held:
                raise ValueError(
                    f"assignment {a.assignment_id}: node {a.node_id} already holds job {a.job_id}"
                )
            held.add((a.job_id, a.node_id))
        for a in made:
            self.assignments[a.assignment_id] = AssignmentRow(
                a.assignment_id,
                a.job_id,
                a.node_id,
                a.hw_class,
                a.attempt if attempt is None else attempt,
                a.deadline_at,
                created_at=self.clock(),
            )

    def add_events(
        self, job_id: UUID, events: Sequence[Event] | Sequence[tuple[str, Any, str]]
    ) -> None:
        """Append reputation events, one per assignment (a second is dropped), and fold
        each into its node's standings, overall and for the job's model."""
        job = self.jobs.get(job_id)
        if job is None:
            raise ValueError(f"reputation events for job {job_id}, which is unknown")
        at = self.clock().timestamp()
        for node_id, assignment_id, kind in sorted(events, key=lambda e: e[0]):
            aid = assignment_id if isinstance(assignment_id, UUID) else UUID(str(assignment_id))
            if aid not in self.assignments:
                raise ValueError(f"reputation event for assignment {aid}, which is unknown")
            if aid in self.charged:
                continue
            if kind not in KINDS:
                raise ValueError(f"unknown reputation event kind {kind!r}")
            self.charged.add(aid)
            event = EventRow(
                len(self.events) + 1,
                node_id,
                job_id,
                aid,
                cast(EventKind, kind),
                job.spec.model,
                job.spec.probe,
                at,
            )
            self.events.append(event)
            for model in ("", event.model) if event.model else ("",):
                before = self.standings.get((node_id, model), Standing())
                self.standings[(node_id, model)] = record(before, event.kind, at, probe=event.probe)

    def write_verdict(
        self, verdict: Verdict, *, events: Sequence[Event] = (), unchecked: bool = False
    ) -> bool:
        """Close a job with its verdict and events; False (nothing written) when it had
        one already."""
        if verdict.job_id in self.verdicts:
            return False
        now = self.clock()
        self.verdicts[verdict.job_id] = VerdictRow(_payload(verdict), now)
        job = self.jobs.get(verdict.job_id)
        if job is not None:
            job.status, job.reason, job.decided_at = verdict.status, verdict.reason, now
            job.unchecked = unchecked
            self.add_events(verdict.job_id, events)
        return True

    def revise_verdict(self, verdict: Verdict, *, events: Sequence[Event] = ()) -> None:
        """Replace a job's verdict with its next revision, to be published again."""
        row = self.verdicts.get(verdict.job_id)
        if row is not None:
            row.payload, row.revision, row.published_at = (
                _payload(verdict),
                verdict.revision,
                None,
            )
            job = self.jobs[verdict.job_id]
            job.status, job.reason, job.decided_at = verdict.status, verdict.reason, self.clock()
            job.unchecked = False
        self.add_events(verdict.job_id, events)

    def complete_parent(self, parent_id: UUID, *, revise: bool = False) -> Verdict | None:
        """Stitch a split job's verdict once every part is decided (store.complete_parent)."""
        parent = self.jobs.get(parent_id)
        if parent is None:
            return None
        if parent.status != "split" and not (revise and parent.status in DECIDED):
            return None
        parts = sorted(
            (j for j in self.jobs.values() if j.spec.parent_id == parent_id),
            key=lambda j: j.spec.part or 0,
        )
        if not parts or any(p.spec.job_id not in self.verdicts for p in parts):
            return None
        decided = []
        for p in parts:
            result = self.canonical(p.spec.job_id)
            decided.append(
                DecidedPart(
                    part=p.spec.part or 0,
                    job_id=p.spec.job_id,
                    params=p.spec.params,
                    verdict=self.verdicts[p.spec.job_id].payload,
                    output=None if result is None else result.output,
                )
            )
        verdict = stitch(
            parent_id, parent.spec.task, parent.spec.model, decided, owner=parent.spec.owner
        )
        if parent.status == "split":
            self.write_verdict(verdict)
            return verdict
        verdict = verdict.model_copy(update={"revision": self.verdicts[parent_id].revision + 1})
        self.revise_verdict(verdict)
        return verdict

    def excused(self, a: AssignmentRow) -> bool:
        """Whether the missed deadline of `a` is excused (protocol.outages.excused)."""
        return excused(a.sent_at, a.deadline_at, self.outages.values(), grace_s=self.outage_grace_s)

    def excuse(self, assignment_ids: Iterable[UUID]) -> int:
        """Mark assignments still awaited as excused, charged to nobody."""
        now, count = self.clock(), 0
        for aid in assignment_ids:
            a = self.assignments.get(aid)
            if a is not None and a.status == "assigned":
                a.status, a.finished_at = "excused", now
                count += 1
        return count

    def time_out(self, assignment_ids: Iterable[UUID]) -> int:
        """Time out assignments still awaited and charge each node once."""
        now, late = self.clock(), []
        for aid in assignment_ids:
            a = self.assignments.get(aid)
            if a is not None and a.status == "assigned":
                a.status, a.finished_at = "timed_out", now
                late.append(a)
        for a in late:
            self.add_events(a.job_id, [(a.node_id, a.assignment_id, "timed_out")])
        return len(late)

    def mark_published(self, job_ids: Iterable[UUID]) -> None:
        """Record that these verdicts reached the verdicts stream."""
        now = self.clock()
        for job_id in job_ids:
            row = self.verdicts.get(job_id)
            if row is not None:
                row.published_at = now

    def notify_due(self, job_ids: Iterable[UUID]) -> None:
        """Tell every listening router that these jobs need replicas now."""
        for job_id in dict.fromkeys(job_ids):
            for listener in list(self.listeners):
                listener(job_id)


class OnTables:
    """What the twin ledger's sides (memory.router_ledger, memory.guard_ledger) stand on."""

    tables: Tables

    @property
    def clock(self) -> Clock:
        """Where the ledger reads the time."""
        return self.tables.clock


def _payload(verdict: Verdict) -> Verdict:
    """A verdict as stored: without a verified output, which its canonical result holds."""
    if verdict.canonical_result_id is None:
        return verdict
    return verdict.model_copy(update={OUTPUT_FIELD[verdict.task]: None})
