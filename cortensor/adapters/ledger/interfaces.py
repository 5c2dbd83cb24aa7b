"""What the router and the guard ask of the ledger, as `typing.Protocol`s.

The PostgreSQL classes (`RouterLedger`, `GuardLedger`) and the in-memory twin
(`cortensor.adapters.memory.MemoryLedger`) both satisfy them; mypy checks both, and
tests/contract/test_ledger_*.py holds them to the same behaviour. Services are typed
against these, never against a concrete ledger.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from cortensor.adapters.ledger.guard import Intake
from cortensor.adapters.ledger.probes import ProbeOutcome
from cortensor.adapters.ledger.router import NodeStats, PlanReplicas
from cortensor.protocol.outages import Outage
from cortensor.protocol.probing import PoolProbe
from cortensor.protocol.units import NewJob
from cortensor.schemas import Assignment, InferenceResult, NodeHeartbeat, Verdict


class VerdictBook(Protocol):
    """Verdicts once written: read one back, and record which reached the verdicts stream
    (`cortensor.services.announce.Announcer` publishes again what was never marked)."""

    async def stored_verdict(self, job_id: UUID) -> Verdict | None:
        """The verdict written for a job (its latest revision), if any."""
        ...

    async def mark_published(self, job_ids: Sequence[UUID]) -> None:
        """Record that these verdicts reached the verdicts stream."""
        ...

    async def unpublished_verdicts(self, older_than_s: float, limit: int = 100) -> list[Verdict]:
        """Verdicts written more than `older_than_s` ago and never marked published,
        oldest first."""
        ...

    async def undecided(self, job_ids: Sequence[UUID]) -> set[UUID]:
        """Those of these jobs that are recorded and have no verdict yet."""
        ...


class OutageBook(Protocol):
    """Server outages as routers and guards saw them (cortensor.protocol.outages)."""

    async def record_outages(self, seen_by: str, outages: Sequence[Outage]) -> None:
        """Record the windows in which `seen_by` could not reach a server: a new one,
        or the end of one recorded while still open."""
        ...

    async def outages_since(self, since_s: float) -> list[Outage]:
        """The recorded windows that ended less than `since_s` seconds ago, or are open."""
        ...

    async def extend_deadlines(self, limit: int = 500) -> int:
        """Push back, once, by outages.EXTENSION_S, the deadline of waiting and running
        jobs whose deadline fell inside an outage; returns how many."""
        ...


class ProbeBook(Protocol):
    """The probe pool's reads (cortensor.adapters.ledger.probes for PostgreSQL)."""

    async def verified_jobs(self, models: Collection[str], per_model: int) -> list[PoolProbe]:
        """Up to `per_model` recent verified jobs of each model that two nodes agreed on
        (not probes, not accepted unchecked), as probes."""
        ...

    async def probe_holders(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """For each pool key, the nodes that held a probe made from it."""
        ...

    async def probe_outcomes(self, after: int, limit: int = 10_000) -> list[ProbeOutcome]:
        """The probe events recorded after event id `after`, in order."""
        ...

    async def last_event(self) -> int:
        """The id of the latest reputation event (0 when there is none)."""
        ...


class RouterBook(VerdictBook, ProbeBook, OutageBook, Protocol):
    """The router's ledger: nodes, jobs and their assignments.

    Every write is idempotent by job id and assignment id; a plan is the caller's
    (`PlanReplicas`), the ledger only loads the jobs to plan and records the result.
    """

    async def upsert_nodes(self, beats: Sequence[NodeHeartbeat]) -> None:
        """Record what nodes announced, and when they were last heard of."""
        ...

    async def node_stats(self) -> dict[str, NodeStats]:
        """Every recorded node's score, trust, streaks per model, offences and count of
        assignments still awaited."""
        ...

    async def open_jobs(self, jobs: Sequence[NewJob]) -> set[UUID]:
        """Write jobs and their first assignments atomically; returns the ids written (a
        job known already is left as it is, with its assignments)."""
        ...

    async def reject(self, job_id: UUID, request: dict[str, Any], verdict: Verdict) -> bool:
        """Record a rejected job and its verdict; False when the job id was known."""
        ...

    async def outstanding(self, job_ids: Sequence[UUID]) -> list[Assignment]:
        """Assignments of these jobs (or of their parts) still awaited, within their
        deadline, of running jobs."""
        ...

    async def route_waiting(
        self, plan: PlanReplicas, limit: int = 100
    ) -> tuple[list[Assignment], list[Verdict]]:
        """Send waiting jobs their replicas, or fail those past their deadline; returns
        the assignments made and the verdicts written (a completed split job's too)."""
        ...

    async def top_up(
        self, plan: PlanReplicas, job_ids: Sequence[UUID] | None = None, limit: int = 100
    ) -> list[Assignment]:
        """Give running jobs within their deadline the replicas they lack now."""
        ...

    async def mark_sent(self, assignment_ids: Sequence[UUID]) -> None:
        """Record that the broker confirmed these assignments (until then a missed
        deadline is excused: the router may have stopped before it published them)."""
        ...

    async def reroute_expired(
        self, plan: PlanReplicas, limit: int = 100, *, horizon: datetime | None = None
    ) -> list[Assignment]:
        """Deal with assignments past their deadline, of running jobs within theirs: an
        excused one (protocol.outages.excused) gets a new window and is returned to be
        sent again; any other is timed out (its node charged once) and its job given
        the replicas it lacks now. Only deadlines before `horizon` (when given) are
        judged: results stored before them may still be on their way
        (protocol.outages.judging_horizon)."""
        ...

    async def listen_due(self, on_due: Callable[[UUID], None]) -> Callable[[], Awaitable[None]]:
        """Call `on_due(job_id)` when a guard commits a job that needs replicas now;
        returns the coroutine function that stops listening."""
        ...


class GuardBook(VerdictBook, OutageBook, Protocol):
    """The guard's ledger: results in, verdicts and reputation events out; every decision
    is the protocol core's (cortensor.protocol.adjudication)."""

    revalidate_deadline_s: float
    """Time given to re-validate an unchecked result."""

    async def take_results(self, job_id: UUID, results: Sequence[InferenceResult]) -> Intake:
        """Store a job's results idempotently (counted only from the node holding the
        assignment; a late one kept but not counted) and act on the core's outcome."""
        ...

    async def take_many(
        self, results: Mapping[UUID, Sequence[InferenceResult]]
    ) -> dict[UUID, Intake]:
        """`take_results` for several jobs (job id -> its results) in one transaction;
        any failure fails them all, none stored."""
        ...

    async def decide_expired(
        self, limit: int = 50, *, horizon: datetime | None = None
    ) -> list[Verdict]:
        """Decide running jobs past their deadline, and before `horizon` when given,
        with what they have (replicas still out are timed out, or excused by an outage);
        returns the verdicts to publish."""
        ...

    async def expire_stragglers(self, limit: int = 500, *, horizon: datetime | None = None) -> int:
        """Time out and charge assignments past their deadline (and before `horizon`
        when given) of jobs already decided; returns how many."""
        ...

    async def purge_content(self, retention_s: float, limit: int = 500) -> int:
        """Remove the inputs and outputs of up to `limit` jobs decided more than
        `retention_s` ago, keeping their sha256; returns how many jobs were purged."""
        ...


class KeyBook(Protocol):
    """The node keys a router or guard checks signatures with, and where it counts what
    it refused (cortensor.adapters.ledger.keys.NodeKeys for PostgreSQL)."""

    async def bound_keys(self) -> dict[str, bytes]:
        """Every node id's unrevoked Ed25519 public key (32 raw bytes)."""
        ...

    async def count_refusals(self, source: str, counts: Mapping[tuple[str, str], int]) -> None:
        """Add `counts` ((publisher, reason) -> how many) to what `source` refused."""
        ...
