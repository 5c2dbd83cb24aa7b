-- Jobs that ended inconclusive or failed, by reason, most frequent first (view
-- unresolved_jobs).
--
-- Run it with:  psql -d cortensor -f db/reports/unresolved.sql
-- or:           cortensor report unresolved [--json]
--
-- Probes are left out. status: failed (no eligible nodes before the deadline) or
-- inconclusive (no strict majority of replicas agreed). A split job and the part that
-- sank it are both listed, each with its own reason. jobs: how many ended with this
-- status and reason; first_at, last_at: the earliest and the latest of their decisions.
SELECT status, reason, jobs, first_at, last_at
FROM unresolved_jobs
ORDER BY jobs DESC, last_at DESC, status, reason;
