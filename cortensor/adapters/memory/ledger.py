"""The in-memory twin of the ledger: the router's side (RouterLedger) and the guard's
(GuardLedger) over one set of tables, so that a router and a guard given the same
`MemoryLedger` see the same jobs.

It holds data, not decisions: plans are the caller's, verdicts the protocol core's
(adjudication.adjudicate / at_deadline), standings the core's fold (reputation.record),
exactly as in PostgreSQL. What it mirrors of the SQL are the guarantees the services
rely on (tests/contract/test_ledger_*.py checks each against PostgreSQL): idempotent
writes by job, assignment and result id; a result counted only from the node holding
its assignment; a late result kept but not counted; a timed-out assignment charged
once; verdict revisions; split jobs stitched when their last part is decided; unchecked
results reopened when their node fails a check. Every method runs without yielding to
the event loop, so each is atomic, as one transaction is.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from uuid import UUID

from cortensor.adapters.ledger.guard import Intake
from cortensor.adapters.ledger.interfaces import GuardBook, RouterBook
from cortensor.adapters.ledger.probes import ProbeOutcome
from cortensor.adapters.ledger.router import NodeStats, PlanReplicas
from cortensor.adapters.memory.tables import (
    TERMINAL,
    AssignmentRow,
    Clock,
    JobRow,
    NodeRow,
    ResultRow,
    Tables,
)
from cortensor.protocol.adjudication import (
    Case,
    Conclude,
    Escalate,
    Outcome,
    Wait,
    adjudicate,
    at_deadline,
    score_late,
)
from cortensor.protocol.planning import Plan, replicas_due, waiting
from cortensor.protocol.probing import OPTIONS, PoolProbe
from cortensor.protocol.reputation import Standing, Trust
from cortensor.protocol.units import NewJob, OpenJob, assignments_for, task_fields
from cortensor.schemas import (
    MAX_DEADLINE_S,
    Assignment,
    InferenceResult,
    NodeHeartbeat,
    Verdict,
    utcnow,
)
from cortensor.settings import REVALIDATE_DEADLINE_S


@dataclass(frozen=True, slots=True)
class _Loaded:
    """An open job and the count of its replicas (router._Loaded)."""

    job: OpenJob
    live: int
    answered: int

    @property
    def due(self) -> int:
        return replicas_due(
            self.job.redundancy, auto=self.job.auto, live=self.live, answered=self.answered
        )


class MemoryLedger:
    """Both sides of the ledger in memory (cortensor.adapters.ledger.interfaces
    RouterBook and GuardBook), on a clock of the caller's (`ManualClock` in tests)."""

    revalidate_deadline_s: float = REVALIDATE_DEADLINE_S

    def __init__(self, clock: Clock = utcnow) -> None:
        self.tables = Tables(clock=clock)
        self._transactions = itertools.count(1)

    @property
    def clock(self) -> Clock:
        """Where the ledger reads the time."""
        return self.tables.clock

    # -- for tests: what SQL would show, and the admissions a test makes directly -----

    def standing(self, node_id: str, model: str = "") -> Standing | None:
        """A node's standing, overall or for one model (None without events)."""
        return self.tables.standings.get((node_id, model))

    def set_trust(self, node_id: str, trust: Trust) -> None:
        """Set a node's trust outright, as an operator's UPDATE of node_standing does."""
        key = (node_id, "")
        self.tables.standings[key] = replace(
            self.tables.standings.get(key, Standing()), trust=trust
        )

    # -- verdicts (store.Ledger) ---------------------------------------------------------

    async def stored_verdict(self, job_id: UUID) -> Verdict | None:
        """The verdict written for a job, if any."""
        return self.tables.stored(job_id)

    async def mark_published(self, job_ids: Sequence[UUID]) -> None:
        """Record that these verdicts reached the verdicts stream."""
        self.tables.mark_published(job_ids)

    async def unpublished_verdicts(self, older_than_s: float, limit: int = 100) -> list[Verdict]:
        """Verdicts written before `older_than_s` ago and never marked published."""
        cutoff = self.clock() - timedelta(seconds=older_than_s)
        rows = sorted(
            (
                (row.created_at, job_id)
                for job_id, row in self.tables.verdicts.items()
                if row.published_at is None and row.created_at < cutoff
            ),
            key=lambda r: r[0],
        )
        return [v for _, job_id in rows[:limit] if (v := self.tables.stored(job_id)) is not None]

    # -- the router's side (RouterLedger) -------------------------------------------------

    async def upsert_nodes(self, beats: Sequence[NodeHeartbeat]) -> None:
        """Record what nodes announced, and when they were last heard of."""
        now = self.clock()
        for beat in beats:
            self.tables.nodes[beat.node_id] = NodeRow(beat, now)

    async def node_stats(self) -> dict[str, NodeStats]:
        """Every recorded node's score, trust, streaks, offences and outstanding count."""
        outstanding: dict[str, int] = {}
        for a in self.tables.assignments.values():
            if a.status == "assigned":
                outstanding[a.node_id] = outstanding.get(a.node_id, 0) + 1
        streaks: dict[str, dict[str, int]] = {}
        for (node_id, model), s in self.tables.standings.items():
            if model:
                streaks.setdefault(node_id, {})[model] = s.streak
        stats = {}
        for node_id in self.tables.nodes:
            s = self.tables.standings.get((node_id, ""), Standing())
            stats[node_id] = NodeStats(
                s.score,
                outstanding.get(node_id, 0),
                s.trust,
                streaks.get(node_id, {}),
                s.offences,
            )
        return stats

    async def open_jobs(self, jobs: Sequence[NewJob]) -> set[UUID]:
        """Write jobs and their first assignments; a job known already is left alone."""
        ids = [n.job.job_id for n in jobs]
        if len(set(ids)) != len(ids):
            raise ValueError("open_jobs: job ids must be distinct within one call")
        new = [n for n in jobs if n.job.job_id not in self.tables.jobs]
        known = set(self.tables.jobs) | {n.job.job_id for n in new}
        for n in new:
            if n.job.parent_id is not None and n.job.parent_id not in known:
                raise ValueError(f"job {n.job.job_id}: its parent {n.job.parent_id} is unknown")
            if any(a.job_id != n.job.job_id for a in n.assignments):
                raise ValueError(f"job {n.job.job_id}: an assignment names another job")
        self.tables.insert_assignments([a for n in new for a in n.assignments], attempt=1)
        for n in new:
            self.tables.jobs[n.job.job_id] = JobRow(
                spec=n.job,
                status=n.status,
                created_at=n.created_at,
                deadline_at=n.job.deadline_at,
                redundancy=n.job.redundancy,
                seq=self.tables.next_seq(),
            )
        return {n.job.job_id for n in new}

    async def reject(self, job_id: UUID, request: dict[str, Any], verdict: Verdict) -> bool:
        """Record a rejected job and its verdict; False when the job id was known."""
        if job_id in self.tables.jobs:
            return False
        task = request.get("task")
        now = self.clock()
        spec = OpenJob(
            job_id=job_id,
            task=task[:64] if isinstance(task, str) else "",
            model="",
            redundancy=0,
            hw_class="",
            inputs=[],
            deadline_at=now,
            taken=frozenset(),
        )
        self.tables.jobs[job_id] = JobRow(
            spec, "rejected", now, now, 0, self.tables.next_seq(), decided_at=now
        )
        self.tables.write_verdict(verdict)
        return True

    async def outstanding(self, job_ids: Sequence[UUID]) -> list[Assignment]:
        """Assignments of these jobs (or their parts) still awaited within their deadline."""
        wanted, now = set(job_ids), self.clock()
        out = []
        for a in self.tables.assignments.values():
            job = self.tables.jobs[a.job_id]
            if not (a.job_id in wanted or job.spec.parent_id in wanted):
                continue
            if a.status == "assigned" and a.deadline_at > now and job.status == "running":
                out.append(self._message(a, job))
        return out

    @staticmethod
    def _message(a: AssignmentRow, job: JobRow) -> Assignment:
        spec = job.spec
        return Assignment(
            assignment_id=a.assignment_id,
            job_id=a.job_id,
            node_id=a.node_id,
            task=spec.task,
            model=spec.model,
            hw_class=a.hw_class,
            deadline_at=a.deadline_at,
            attempt=a.attempt,
            **task_fields(spec.inputs, spec.params, spec.audio),
        )

    def _by_creation(self, job_ids: Iterable[UUID]) -> list[JobRow]:
        rows = [self.tables.jobs[j] for j in dict.fromkeys(job_ids) if j in self.tables.jobs]
        return sorted(rows, key=lambda j: (j.created_at, j.seq))

    def _load(self, job_ids: Iterable[UUID]) -> list[_Loaded]:
        loaded = []
        for job in self._by_creation(job_ids):
            held = self.tables.of_job(job.spec.job_id)
            open_job = replace(
                job.spec,
                redundancy=job.redundancy,
                deadline_at=job.deadline_at,
                taken=frozenset(a.node_id for a in held),
                attempt=max((a.attempt for a in held), default=0) + 1,
            )
            live = sum(a.status in ("assigned", "done") for a in held)
            answered = sum(a.status == "done" for a in held)
            loaded.append(_Loaded(open_job, live, answered))
        return loaded

    def _record(self, plan: Plan) -> list[Assignment]:
        made = assignments_for(plan.job, plan.targets, plan.deadline_at)
        self.tables.insert_assignments(made)
        return made

    async def route_waiting(
        self, plan: PlanReplicas, limit: int = 100
    ) -> tuple[list[Assignment], list[Verdict]]:
        """Send waiting jobs their replicas, or fail those past their deadline."""
        ids = [j.spec.job_id for j in self._by_creation(self._with_status("waiting"))][:limit]
        now = self.clock()
        made: list[Assignment] = []
        failed: list[Verdict] = []
        for loaded in self._load(ids):
            job = loaded.job
            fate = waiting(job, now, plan(job, job.redundancy))
            if isinstance(fate, Verdict):
                self.tables.write_verdict(fate)
                failed.append(fate)
                if job.parent_id is not None:
                    parent = self.tables.complete_parent(job.parent_id)
                    failed.extend([parent] if parent is not None else [])
            elif fate is not None:
                made.extend(self._record(fate))
                row = self.tables.jobs[job.job_id]
                row.status, row.redundancy = "running", fate.redundancy
        return made, failed

    def _with_status(self, status: str) -> list[UUID]:
        return [j for j, row in self.tables.jobs.items() if row.status == status]

    async def top_up(
        self, plan: PlanReplicas, job_ids: Sequence[UUID] | None = None, limit: int = 100
    ) -> list[Assignment]:
        """Give running jobs within their deadline the replicas they lack now."""
        now = self.clock()
        running = [
            j
            for j in self._by_creation(job_ids if job_ids is not None else self.tables.jobs)
            if j.status == "running" and j.deadline_at > now
        ]
        if job_ids is None:
            short = [
                loaded
                for loaded in self._load(j.spec.job_id for j in running)
                if loaded.job.redundancy > loaded.live
            ][:limit]
            running = [self.tables.jobs[x.job.job_id] for x in short if x.due]
        return self._replan([j.spec.job_id for j in running], plan)

    async def reroute_expired(self, plan: PlanReplicas, limit: int = 100) -> list[Assignment]:
        """Time out assignments past their deadline (of running jobs within theirs) and
        give their jobs the replicas they lack now."""
        now = self.clock()
        expired = sorted(
            (
                a
                for a in self.tables.assignments.values()
                if a.status == "assigned"
                and a.deadline_at < now
                and self.tables.jobs[a.job_id].status == "running"
                and self.tables.jobs[a.job_id].deadline_at > now
            ),
            key=lambda a: a.deadline_at,
        )[:limit]
        if not expired:
            return []
        self.tables.time_out(a.assignment_id for a in expired)
        return self._replan((a.job_id for a in expired), plan)

    def _replan(self, job_ids: Iterable[UUID], plan: PlanReplicas) -> list[Assignment]:
        made: list[Assignment] = []
        for loaded in self._load(job_ids):
            if loaded.due < 1:
                continue
            outcome = plan(loaded.job, loaded.due)
            if not isinstance(outcome, str):
                made.extend(self._record(outcome))
        return made

    async def listen_due(self, on_due: Callable[[UUID], None]) -> Callable[[], Awaitable[None]]:
        """Call `on_due(job_id)` when a guard commits a job that needs replicas now."""
        self.tables.listeners.append(on_due)

        async def stop() -> None:
            if on_due in self.tables.listeners:
                self.tables.listeners.remove(on_due)

        return stop

    # -- the probe pool's reads (ledger.probes) --------------------------------------------

    async def verified_jobs(self, models: Collection[str], per_model: int) -> list[PoolProbe]:
        """Recent verified jobs of each model that two nodes agreed on, as probes."""
        pool: list[PoolProbe] = []
        for model in sorted(set(models)):
            picked = [j for j in self.tables.jobs.values() if self._poolable(j, model)]
            picked.sort(key=lambda j: j.decided_at or j.created_at, reverse=True)
            pool.extend(self._pool_probe(j) for j in picked[:per_model])
        return pool

    def _poolable(self, job: JobRow, model: str) -> bool:
        spec, verdict = job.spec, self.tables.verdicts.get(job.spec.job_id)
        result = self.tables.canonical(spec.job_id)
        return (
            spec.model == model
            and job.status == "verified"
            and not spec.probe
            and not job.unchecked
            and verdict is not None
            and len(verdict.payload.agreeing) >= 2
            and (len(spec.inputs) > 0 or spec.audio is not None)
            and result is not None
            and result.error is None
            and result.output is not None
        )

    def _pool_probe(self, job: JobRow) -> PoolProbe:
        spec = job.spec
        result = self.tables.canonical(spec.job_id)
        assert result is not None  # _poolable
        agreeing = set(self.tables.verdicts[spec.job_id].payload.agreeing)
        held = self.tables.of_job(spec.job_id)
        answers = [r for a in held if (r := self.tables.result_of(a.assignment_id)) is not None]
        span = (job.deadline_at - job.created_at).total_seconds()
        return PoolProbe(
            key=str(spec.job_id),
            task=spec.task,
            model=spec.model,
            inputs=tuple(spec.inputs),
            audio=spec.audio,
            options={k: spec.params[k] for k in OPTIONS if k in spec.params},
            reference=result.output,
            precision=result.precision,
            deadline_s=min(max(span, 1.0), MAX_DEADLINE_S),
            holders=frozenset(a.node_id for a in held),
            agreed_at=frozenset(
                r.precision.split("/", 1)[0] for r in answers if r.node_id in agreeing
            ),
        )

    async def probe_holders(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """For each pool key, the nodes that held a probe made from it."""
        wanted, holders = set(keys), dict[str, set[str]]()
        for job_id, job in self.tables.jobs.items():
            source = job.spec.params.get("source")
            if job.spec.probe and source in wanted:
                nodes = {a.node_id for a in self.tables.of_job(job_id)}
                if nodes:
                    holders.setdefault(source, set()).update(nodes)
        return {k: sorted(v) for k, v in holders.items()}

    async def probe_outcomes(self, after: int, limit: int = 10_000) -> list[ProbeOutcome]:
        """The probe events recorded after event id `after`, in order."""
        events = [e for e in self.tables.events if e.probe and e.event_id > after][:limit]
        return [ProbeOutcome(e.event_id, e.node_id, e.kind == "agreed") for e in events]

    async def last_event(self) -> int:
        """The id of the latest reputation event (0 when there is none)."""
        return self.tables.events[-1].event_id if self.tables.events else 0

    # -- the guard's side (GuardLedger) ---------------------------------------------------

    async def take_results(self, job_id: UUID, results: Sequence[InferenceResult]) -> Intake:
        """Store a job's results and act on the core's outcome (GuardLedger.take_results)."""
        intake = Intake()
        unique: dict[UUID, InferenceResult] = {}
        for r in results:
            if r.job_id != job_id or r.assignment_id in unique:
                intake.ignored.append(f"result {r.result_id} is a duplicate or for another job")
            else:
                unique[r.assignment_id] = r
        batch = list(unique.values())
        job = self.tables.jobs.get(job_id)
        if job is None:
            intake.ignored.append(f"job {job_id} is unknown")
            return intake
        decided = job.status in TERMINAL
        others = self.tables.ordered(
            a for a in self.tables.of_job(job_id) if a.assignment_id not in unique
        )
        counted = self._store(job_id, batch, intake)
        fresh = [self._stored_replica(r) for r in batch if r.assignment_id in counted]
        if decided:
            canonical = self.tables.canonical(job_id)
            if fresh and canonical is not None:
                late = score_late(job.spec.task, canonical.replica(), fresh)
                self.tables.add_events(job_id, late)
            intake.verdict = self.tables.stored(job_id)
            return intake
        if fresh:
            self._apply(job, adjudicate(self._case(job, others, fresh)), intake)
        return intake

    def _store(self, job_id: UUID, batch: Sequence[InferenceResult], intake: Intake) -> set[UUID]:
        """Store each result once; count it if its assignment was still awaited."""
        txn, now = next(self._transactions), self.clock()
        counted: set[UUID] = set()
        for r in batch:
            a = self.tables.assignments.get(r.assignment_id)
            aid = r.assignment_id
            if a is None or a.job_id != job_id or a.node_id != r.node_id:
                intake.ignored.append(f"assignment {aid}: not held by the node that answered")
            elif r.result_id in self.tables.results or aid in self.tables.answered:
                intake.ignored.append(f"assignment {aid}: duplicate result")
            else:
                self.tables.results[r.result_id] = ResultRow(
                    r.result_id,
                    aid,
                    job_id,
                    r.node_id,
                    r.precision_label(),
                    None if r.error else r.output(),
                    r.error,
                    txn,
                )
                self.tables.answered[aid] = r.result_id
                if a.status == "assigned":
                    a.status, a.finished_at = "done", now
                    intake.stored += 1
                    counted.add(aid)
                else:
                    intake.ignored.append(f"assignment {aid}: result too late")
        return counted

    def _stored_replica(self, r: InferenceResult) -> Any:
        return self.tables.results[r.result_id].replica()

    def _case(
        self,
        job: JobRow,
        others: Sequence[AssignmentRow],
        fresh: Sequence[Any] = (),
        *,
        expired: bool = False,
    ) -> Case:
        """A job's case from its row, its other replicas and the new results (guard._case)."""
        spec, first = job.spec, self.tables.verdicts.get(job.spec.job_id)
        done = [self.tables.result_of(a.assignment_id) for a in others if a.status == "done"]
        return Case(
            job_id=spec.job_id,
            task=spec.task,
            model=spec.model,
            redundancy=job.redundancy,
            replicas=[r.replica() for r in done if r is not None] + list(fresh),
            timed_out=[
                (str(a.assignment_id), a.node_id) for a in others if a.status == "timed_out"
            ],
            parent_id=spec.parent_id,
            part=spec.part,
            auto=spec.auto,
            reference=spec.params.get("reference") if spec.probe else None,
            reference_precision=spec.params.get("reference_precision", "fp32"),
            pending=sum(a.status == "assigned" for a in others),
            first=None if first is None else first.payload,
            expired=expired,
        )

    def _apply(self, job: JobRow, outcome: Outcome, intake: Intake) -> None:
        """Record what the core decided for a job whose replicas changed."""
        job_id = job.spec.job_id
        if isinstance(outcome, Wait):
            if outcome.due:
                self.tables.notify_due([job_id])
            return
        if isinstance(outcome, Escalate):
            job.redundancy = outcome.redundancy
            self.tables.notify_due([job_id])
            intake.escalated = outcome.redundancy
            return
        intake.parent, intake.reopened = self._conclude(job, outcome)
        if outcome.publish:
            intake.verdict, intake.new_verdict = outcome.verdict, True

    def _conclude(self, job: JobRow, outcome: Conclude) -> tuple[Verdict | None, int]:
        """Record a decision, reopen the unchecked results of nodes it caught, and stitch
        the split job it may complete (GuardLedger._conclude)."""
        verdict, t = outcome.verdict, self.tables
        if outcome.keep_first:
            job.status, job.reason, job.unchecked = verdict.status, verdict.reason, True
            t.add_events(job.spec.job_id, outcome.events)
            return None, 0
        if outcome.revision:
            t.revise_verdict(verdict, events=outcome.events)
        else:
            t.write_verdict(verdict, events=outcome.events, unchecked=outcome.unchecked)
            if not outcome.publish:
                t.mark_published([verdict.job_id])
        reopened: list[JobRow] = []
        if outcome.reopen is not None:
            reopened = self._reopen(job.spec.model, outcome.reopen.nodes, outcome.reopen.limit)
            deadline = self.clock() + timedelta(seconds=self.revalidate_deadline_s)
            for r in reopened:
                r.unchecked, r.status, r.redundancy, r.deadline_at = (
                    False,
                    "running",
                    outcome.reopen.redundancy,
                    deadline,
                )
            t.notify_due(r.spec.job_id for r in reopened)
        parent = None
        if job.spec.parent_id is not None:
            parent = t.complete_parent(job.spec.parent_id, revise=outcome.revision)
        return parent, len(reopened)

    def _reopen(self, model: str, nodes: Collection[str], limit: int) -> list[JobRow]:
        """The most recent unchecked jobs of `model` whose canonical result is a node's
        of `nodes`."""
        picked = []
        for job in self.tables.jobs.values():
            canonical = self.tables.canonical(job.spec.job_id)
            if (
                job.unchecked
                and job.spec.model == model
                and canonical is not None
                and canonical.node_id in nodes
            ):
                picked.append(job)
        picked.sort(key=lambda j: j.decided_at or j.created_at, reverse=True)
        return picked[:limit]

    async def expire_stragglers(self, limit: int = 500) -> int:
        """Time out and charge assignments past their deadline of jobs already decided."""
        now = self.clock()
        late = sorted(
            (
                a
                for a in self.tables.assignments.values()
                if a.status == "assigned"
                and a.deadline_at < now
                and self.tables.jobs[a.job_id].status not in ("waiting", "running")
            ),
            key=lambda a: a.deadline_at,
        )[:limit]
        return self.tables.time_out(a.assignment_id for a in late)

    async def decide_expired(self, limit: int = 50) -> list[Verdict]:
        """Decide running jobs past their deadline with the results they have."""
        now = self.clock()
        jobs = sorted(
            (j for j in self.tables.jobs.values() if j.status == "running" and j.deadline_at < now),
            key=lambda j: j.deadline_at,
        )[:limit]
        verdicts: list[Verdict] = []
        parents: set[UUID] = set()
        for job in jobs:
            held = self.tables.of_job(job.spec.job_id)
            for a in held:
                if a.status == "assigned":
                    a.status, a.finished_at = "timed_out", now
            rows = self.tables.ordered(held)
            outcome = at_deadline(self._case(job, rows, expired=True))
            parent, _ = self._conclude(job, outcome)
            if outcome.publish and not outcome.keep_first:
                verdicts.append(outcome.verdict)
            if parent is not None:
                parents.add(parent.job_id)
                verdicts.append(parent)
        for parent_id in {j.spec.parent_id for j in jobs} - {None, *parents}:
            assert parent_id is not None
            stitched = self.tables.complete_parent(parent_id)
            if stitched is not None:
                verdicts.append(stitched)
        return verdicts


def sides(ledger: MemoryLedger) -> tuple[RouterBook, GuardBook]:
    """One MemoryLedger as a router's ledger and as a guard's: the same tables behind
    both, so that the router and the guard given them see the same jobs."""
    return ledger, ledger
