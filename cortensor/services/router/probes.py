"""The router's probes: when each node is due one (ProbeSchedule), which probe it gets
(ProbePool, drawn from the network's verified traffic), and the job that carries it,
recorded and sent like any other.

A probe job is identical in form to a real job's replica: a fresh random job id, the
source job's inputs and options, its deadline computed by the same Timing from the
source job's own time and pushed back by the work its node holds (the router's
planning.Backlog), attempt 1, published by the same router in the same kind of task
message. Its reference and source stay in the ledger's params, which no node sees.

A probe is work its node must run before what comes after it, so its work counts in
that same backlog: the router's plans then give the real replicas queued behind it
their time, or other nodes. A node that gets only probes (on probation or in
quarantine, which knows it) is sent its next one only once it holds nothing, so that
it is admitted with no pile of probes ahead of its first real jobs. An active node's
probes come whether it is busy or not: one held back while a node is busy would tell
it that what it gets while busy is real.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import structlog

from cortensor.adapters.ledger.interfaces import ProbeBook, RouterBook
from cortensor.inference.probes import load_probes
from cortensor.protocol.placement import NodeView
from cortensor.protocol.planning import Backlog, Timing
from cortensor.protocol.probing import ProbePolicy, ProbePool, ProbeSchedule, probe_job
from cortensor.protocol.units import NewJob, assignments_for
from cortensor.schemas import Assignment, utcnow
from cortensor.settings import Settings

log = structlog.get_logger(__name__)


def policy(settings: Settings) -> ProbePolicy:
    """The probe policy the settings describe."""
    return ProbePolicy(
        probation_mean_s=settings.probe_interval_s,
        quarantine_mean_s=settings.quarantine_probe_interval_s,
        quarantine_max_s=max(settings.quarantine_probe_max_s, settings.quarantine_probe_interval_s),
        active_mean_s=settings.active_probe_interval_s,
    )


class ProbeSender:
    """Sends each node its probes at the times the schedule draws.

    The pool is read again from the ledger every `probe_pool_refresh_s`, with the
    outcomes of the probes judged since (a failed one lengthens a quarantined node's
    gaps). Several routers each keep a schedule: with R routers a node is probed R times
    as often as one router's policy says.
    """

    def __init__(
        self, settings: Settings, rng: random.Random, backlog: Backlog | None = None
    ) -> None:
        self.settings, self.rng = settings, rng
        self.backlog = Backlog() if backlog is None else backlog
        """The work sent to each node and not yet due: the router's, shared with its plans."""
        self.schedule = ProbeSchedule(policy(settings), rng, node_ttl_s=settings.node_ttl_s)
        self.pool = ProbePool()
        self._read_at = -math.inf
        self._after: int | None = None
        """The last probe event whose outcome the schedule has seen."""

    def load(self, path: Path) -> None:
        """Take the prepared probes at `path` as the bootstrap pool (ModelsNotPrepared
        when they are missing)."""
        self.pool = ProbePool(load_probes(path).probes)

    async def refresh(self, ledger: ProbeBook, models: Iterable[str]) -> None:
        """Read the pool of verified jobs, who held each, and the probes' outcomes."""
        s = self.settings
        traffic = await ledger.verified_jobs(set(models), s.probe_pool_size)
        keys = [p.key for p in traffic] + self.pool.keys()
        self.pool.refresh(traffic, await ledger.probe_holders(keys))
        if self._after is None:
            # Outcomes from before this router started belong to other schedules.
            self._after = await ledger.last_event()
            return
        # An event id is drawn before its transaction commits, so one committed late
        # behind a higher id is missed here: it only tunes the back-off, which the next
        # outcome of the same node sets right.
        for outcome in await ledger.probe_outcomes(self._after):
            self.schedule.outcome(outcome.node_id, outcome.passed)
            self._after = outcome.event_id

    def due(self, nodes: Sequence[NodeView], now: float) -> list[NewJob]:
        """The probe jobs to send now (each with its one assignment), drawn for every
        node whose turn it is and that may be sent some probe; `now` is monotonic. A node
        that gets only probes and still holds work (`NodeView.inflight`) stays due until
        it holds none (see the module's note). Each probe's deadline counts the work its
        node holds, and its own work goes into the backlog, as a real replica's does."""
        opened: list[NewJob] = []
        for node in nodes:
            if not self.schedule.due(node, now):
                continue
            if node.trust != "active" and node.inflight > 0:
                continue  # it stays due, and gets its probe once it holds nothing
            probe = self.pool.pick(node, self.rng)
            if probe is None:
                continue  # nothing it has not seen: it stays due, and gets the next one
            created = utcnow()
            # uuid4 (the system's randomness), as clients draw real job ids: a seeded
            # generator's ids could be learnt by a node and would mark its probes.
            job = probe_job(probe, node, uuid.uuid4(), created)
            ahead = self.backlog.ahead([node.node_id], created).get(node.node_id, 0.0)
            deadline = self.timing.deadline(job, created, ahead)
            self.backlog.add([node.node_id], self.timing.work_s(job.params), deadline)
            assignments = assignments_for(job, [(node.node_id, node.hw_class)], deadline)
            opened.append(NewJob(job, created, "running", assignments))
            self.pool.sent(probe, node.node_id)
            self.schedule.sent(node.node_id, now)
        return opened

    @property
    def timing(self) -> Timing:
        """A replica's time, exactly as the router computes it for real jobs."""
        return Timing.of(self.settings)

    async def send(self, ledger: RouterBook, nodes: Sequence[NodeView]) -> list[Assignment]:
        """Record the probes due now and return their assignments, to be published with
        the sweep's others; reads the pool again first when it is due."""
        now = time.monotonic()
        if now - self._read_at >= self.settings.probe_pool_refresh_s:
            self._read_at = now
            try:
                await self.refresh(ledger, {m for n in nodes for m in n.models})
            except Exception:
                log.exception("probe pool not read; the last one is kept")
        self.schedule.keep_only(n.node_id for n in nodes)
        opened = self.due(nodes, now)
        if not opened:
            return []
        written = await ledger.open_jobs(opened)
        return [a for new in opened if new.job.job_id in written for a in new.assignments]
