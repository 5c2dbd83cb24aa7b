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

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from uuid import UUID

from cortensor.adapters.ledger.interfaces import GuardBook, RouterBook
from cortensor.adapters.memory.guard_ledger import GuardSide
from cortensor.adapters.memory.router_ledger import RouterSide
from cortensor.adapters.memory.tables import Clock, Tables
from cortensor.protocol.outages import Outage, extended
from cortensor.protocol.reputation import Standing, Trust
from cortensor.schemas import Verdict, utcnow


class MemoryLedger(RouterSide, GuardSide):
    """Both sides of the ledger in memory (cortensor.adapters.ledger.interfaces
    RouterBook and GuardBook: the router's methods in memory.router_ledger, the guard's in
    memory.guard_ledger), on a clock of the caller's (`ManualClock` in tests)."""

    def __init__(self, clock: Clock = utcnow) -> None:
        self.tables = Tables(clock=clock)

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

    async def undecided(self, job_ids: Sequence[UUID]) -> set[UUID]:
        """Those of these jobs that are recorded and have no verdict yet."""
        jobs = self.tables.jobs
        return {
            j for j in job_ids if j in jobs and jobs[j].status in ("waiting", "running", "split")
        }

    # -- outages (store.Ledger) ----------------------------------------------------------

    async def record_outages(self, seen_by: str, outages: Sequence[Outage]) -> None:
        """Record (or close) the windows in which `seen_by` could not reach a server."""
        for o in outages:
            key = (o.server, seen_by, o.started_at)
            known = self.tables.outages.get(key)
            if known is None:
                self.tables.outages[key] = o
            elif known.ongoing:
                end = max(known.ended_at, o.ended_at)
                self.tables.outages[key] = replace(o, ended_at=end)

    async def outages_since(self, since_s: float) -> list[Outage]:
        """The recorded windows that ended less than `since_s` seconds ago, or are open."""
        cutoff = self.clock() - timedelta(seconds=since_s)
        return sorted(
            (o for o in self.tables.outages.values() if o.ended_at > cutoff or o.ongoing),
            key=lambda o: o.started_at,
        )

    async def extend_deadlines(self, limit: int = 500) -> int:
        """Push back, once, the deadline of open jobs whose deadline fell inside an outage."""
        t, count = self.tables, 0
        for job in sorted(t.jobs.values(), key=lambda j: j.deadline_at):
            if count == limit:
                break
            if job.status not in ("waiting", "running") or job.extended:
                continue
            later = extended(job.deadline_at, t.outages.values(), grace_s=t.outage_grace_s)
            if later is not None:
                job.deadline_at, job.extended = later, True
                job.spec = replace(job.spec, deadline_at=later)
                count += 1
        return count


def sides(ledger: MemoryLedger) -> tuple[RouterBook, GuardBook]:
    """One MemoryLedger as a router's ledger and as a guard's: the same tables behind
    both, so that the router and the guard given them see the same jobs."""
    return ledger, ledger
