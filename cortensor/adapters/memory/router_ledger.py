"""The router's side of the twin ledger (cortensor.adapters.ledger.router and .probes):
nodes, jobs, their assignments, and the probe pool's reads, over the shared `Tables`.

The jobs to plan are loaded as the SQL loads them (oldest first, with the nodes they
used and the count of their replicas); the plan is the caller's, and what it returns
is recorded. Nothing here decides.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from cortensor.adapters.ledger.probes import ProbeOutcome
from cortensor.adapters.ledger.router import NodeStats, PlanReplicas
from cortensor.adapters.memory.tables import AssignmentRow, JobRow, NodeRow, OnTables
from cortensor.protocol.outages import renewed
from cortensor.protocol.planning import Plan, replicas_due, waiting
from cortensor.protocol.probing import OPTIONS, PoolProbe
from cortensor.protocol.reputation import Standing
from cortensor.protocol.units import NewJob, OpenJob, assignments_for, task_fields
from cortensor.schemas import MAX_DEADLINE_S, Assignment, NodeHeartbeat, Verdict


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


class RouterSide(OnTables):
    """RouterLedger's methods (and the probe pool's reads) on the twin's tables."""

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
        """Record a rejected job (of the verdict's owner) and its verdict; False when the
        job id was known."""
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
            owner=verdict.owner,
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

    async def mark_sent(self, assignment_ids: Sequence[UUID]) -> None:
        """Record that the broker confirmed these assignments."""
        now = self.clock()
        for aid in assignment_ids:
            a = self.tables.assignments.get(aid)
            if a is not None:
                a.sent_at = now

    async def reroute_expired(
        self, plan: PlanReplicas, limit: int = 100, *, horizon: datetime | None = None
    ) -> list[Assignment]:
        """Renew and send again the excused assignments past their deadline (of running
        jobs within theirs); time out and charge the others, and give their jobs the
        replicas they lack now. Only deadlines before `horizon`, when given, are judged."""
        now = self.clock()
        cut = now if horizon is None else min(now, horizon)
        expired = sorted(
            (
                a
                for a in self.tables.assignments.values()
                if a.status == "assigned"
                and a.deadline_at < cut
                and self.tables.jobs[a.job_id].status == "running"
                and self.tables.jobs[a.job_id].deadline_at > now
            ),
            key=lambda a: a.deadline_at,
        )[:limit]
        if not expired:
            return []
        again: list[Assignment] = []
        late = []
        for a in expired:
            if not self.tables.excused(a):
                late.append(a)
                continue
            job = self.tables.jobs[a.job_id]
            a.deadline_at = renewed(a.created_at or now, a.deadline_at, job.deadline_at, now)
            a.sent_at = None
            again.append(self._message(a, job))
        if not late:
            return again
        self.tables.time_out(a.assignment_id for a in late)
        return again + self._replan((a.job_id for a in late), plan)

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
