"""The guard's side of the twin ledger (cortensor.adapters.ledger.guard): results in,
verdicts and reputation events out, over the shared `Tables`.

A job's case is loaded as the SQL loads it and handed to the protocol core
(adjudication.adjudicate, at_deadline); the outcome is applied as GuardLedger applies it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from cortensor.adapters.ledger.guard import Intake, unique_results
from cortensor.adapters.ledger.retention import OUTPUT_KEYS
from cortensor.adapters.memory.tables import TERMINAL, AssignmentRow, JobRow, OnTables, ResultRow
from cortensor.errors import BadInput
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
from cortensor.protocol.consensus import Replica
from cortensor.schemas import OPEN_STATUSES, InferenceResult, Verdict, storable
from cortensor.settings import REVALIDATE_DEADLINE_S


def _refused(value: Any) -> str | None:
    """What PostgreSQL would refuse in a value bound for text or jsonb (see
    cortensor.adapters.ledger.guard.UNSTORABLE): NUL or a lone surrogate in a string,
    NaN or an infinity in a number; None when it would store it."""
    if isinstance(value, str):
        try:
            storable(value)
        except BadInput as exc:
            return str(exc)
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a number JSON can hold"
    elif isinstance(value, dict | list):
        items = value.values() if isinstance(value, dict) else value
        return next((why for v in items if (why := _refused(v)) is not None), None)
    return None


def _check_storable(results: Sequence[InferenceResult]) -> None:
    """Raise BadInput, as GuardLedger does, for a batch holding a value it cannot store."""
    for r in results:
        why = _refused([r.node_id, r.precision_label(), r.error or "", r.output()])
        if why is not None:
            raise BadInput(f"the ledger cannot store this: {why}")


class GuardSide(OnTables):
    """GuardLedger's methods on the twin's tables."""

    revalidate_deadline_s: float = REVALIDATE_DEADLINE_S
    """Time given to re-validate an unchecked result (Settings.revalidate_deadline_s)."""

    async def take_results(self, job_id: UUID, results: Sequence[InferenceResult]) -> Intake:
        """Store a job's results and act on the core's outcome (GuardLedger.take_results)."""
        intake = Intake()
        batch = unique_results(job_id, results, intake)
        unique = {r.assignment_id for r in batch}
        job = self.tables.jobs.get(job_id)
        if job is None:
            intake.ignored.append(f"job {job_id} is unknown")
            return intake
        _check_storable(batch)
        intake.submitted_at = job.created_at
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

    async def take_many(
        self, results: Mapping[UUID, Sequence[InferenceResult]]
    ) -> dict[UUID, Intake]:
        """`take_results` for several jobs at once; a value the ledger cannot store fails
        them all, none stored (GuardLedger.take_many)."""
        for given in results.values():
            _check_storable(given)
        return {job_id: await self.take_results(job_id, given) for job_id, given in results.items()}

    def _store(self, job_id: UUID, batch: Sequence[InferenceResult], intake: Intake) -> set[UUID]:
        """Store each result once; count it if its assignment was still awaited."""
        now = self.clock()
        counted: set[UUID] = set()
        for r in batch:
            a = self.tables.assignments.get(r.assignment_id)
            aid = r.assignment_id
            if a is None or (a.job_id, a.node_id, a.hw_class) != (job_id, r.node_id, r.hw_class):
                intake.ignored.append(f"assignment {aid}: not held by the node that answered")
                intake.unheld.append(r.node_id)
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
                    self.tables.next_seq(),
                )
                self.tables.answered[aid] = r.result_id
                if a.status == "assigned":
                    a.status, a.finished_at = "done", now
                    intake.stored += 1
                    counted.add(aid)
                else:
                    intake.ignored.append(f"assignment {aid}: result too late")
        return counted

    def _stored_replica(self, r: InferenceResult) -> Replica:
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
            owner=spec.owner,
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
                and job.purged_at is None
                and job.spec.model == model
                and canonical is not None
                and canonical.node_id in nodes
            ):
                picked.append(job)
        picked.sort(key=lambda j: j.decided_at or j.created_at, reverse=True)
        return picked[:limit]

    async def purge_content(self, retention_s: float, limit: int = 500) -> int:
        """Remove the content of jobs decided more than `retention_s` ago
        (GuardLedger.purge_content; the twin keeps no hashes)."""
        t, now = self.tables, self.clock()
        due = sorted(
            (
                j
                for j in t.jobs.values()
                if j.purged_at is None
                and j.status in TERMINAL
                and j.decided_at is not None
                and j.decided_at < now - timedelta(seconds=retention_s)
            ),
            key=lambda j: j.decided_at or now,
        )[:limit]
        blank = dict.fromkeys(OUTPUT_KEYS)
        for job in due:
            params = {k: v for k, v in job.spec.params.items() if k != "reference"}
            job.spec = dataclasses.replace(job.spec, inputs=[], audio=None, params=params)
            job.purged_at = now
            for result_id, result in list(t.results.items()):
                if result.job_id == job.spec.job_id:
                    t.results[result_id] = dataclasses.replace(result, output=None)
            verdict = t.verdicts.get(job.spec.job_id)
            if verdict is not None:
                verdict.payload = verdict.payload.model_copy(update=blank)
        return len(due)

    async def expire_stragglers(self, limit: int = 500, *, horizon: datetime | None = None) -> int:
        """Time out and charge assignments past their deadline of jobs already decided
        (only deadlines before `horizon`, when given)."""
        now = self.clock()
        cut = now if horizon is None else min(now, horizon)
        late = sorted(
            (
                a
                for a in self.tables.assignments.values()
                if a.status == "assigned"
                and a.deadline_at < cut
                and self.tables.jobs[a.job_id].status not in OPEN_STATUSES
            ),
            key=lambda a: a.deadline_at,
        )[:limit]
        self.tables.excuse(a.assignment_id for a in late if self.tables.excused(a))
        return self.tables.time_out(a.assignment_id for a in late if a.status == "assigned")

    async def decide_expired(
        self, limit: int = 50, *, horizon: datetime | None = None
    ) -> list[Verdict]:
        """Decide running jobs past their deadline with the results they have (only
        deadlines before `horizon`, when given)."""
        now = self.clock()
        cut = now if horizon is None else min(now, horizon)
        jobs = sorted(
            (j for j in self.tables.jobs.values() if j.status == "running" and j.deadline_at < cut),
            key=lambda j: j.deadline_at,
        )[:limit]
        verdicts: list[Verdict] = []
        parents: set[UUID] = set()
        for job in jobs:
            held = self.tables.of_job(job.spec.job_id)
            for a in held:
                if a.status == "assigned":
                    excused = self.tables.excused(a)
                    a.status, a.finished_at = ("excused" if excused else "timed_out"), now
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
