"""The ledger's retention of user content: once a job has been decided for longer than
the retention period (Settings.retention_h), its inputs, audio and outputs go, and only
their sha256 remains beside its statuses, timings and reputation events.

What goes, per job: `jobs.inputs` and `jobs.audio` (sha256 kept in `inputs_sha256`,
`audio_sha256`), a probe's reference output (`params.reference`), each result's
`output` (sha256 kept in `results.output_sha256`), and the outputs a verdict's payload
holds itself (a split job's stitched output). `jobs.purged_at` marks the
job; nothing else changes, and no row is deleted.

The hashes are computed here, at purge time, rather than when the content is written:
the hot paths (the router's batch insert, the guard's result intake) stay as they are,
jobs recorded before retention existed are covered too, and the content is hashed
exactly as the ledger held it: sha256 of the UTF-8 of PostgreSQL's jsonb text form for
inputs and outputs (`encode(sha256(convert_to('["a", "b"]'::jsonb::text, 'UTF8')),
'hex')` recomputes it), of the raw bytes for audio.

A function over a Ledger's pool, like cortensor.adapters.ledger.probes: the guard's
periodic sweep calls it through GuardLedger.purge_content.
"""

from __future__ import annotations

from cortensor.adapters.ledger.store import Ledger
from cortensor.schemas import OUTPUT_FIELD, TERMINAL_STATUSES

OUTPUT_KEYS = sorted(set(OUTPUT_FIELD.values()))
"""The fields of a Verdict that carry an output."""

_PURGE = """
WITH due AS (
    SELECT job_id FROM jobs
    WHERE purged_at IS NULL AND decided_at IS NOT NULL
      AND decided_at < now() - make_interval(secs => $1)
      AND status = ANY($4::text[])
    ORDER BY decided_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), outputs AS (
    UPDATE results r
    SET output_sha256 = sha256(convert_to(r.output::text, 'UTF8')), output = NULL
    WHERE r.job_id IN (SELECT job_id FROM due) AND r.output IS NOT NULL
    RETURNING r.job_id
), verdict_outputs AS (
    UPDATE verdicts v
    SET payload = v.payload - $3::text[]
    WHERE v.job_id IN (SELECT job_id FROM due)
    RETURNING v.job_id
)
UPDATE jobs j
SET inputs_sha256 = CASE WHEN j.inputs IS NULL THEN j.inputs_sha256
                         ELSE sha256(convert_to(j.inputs::text, 'UTF8')) END,
    audio_sha256 = CASE WHEN j.audio IS NULL THEN j.audio_sha256 ELSE sha256(j.audio) END,
    inputs = NULL,
    audio = NULL,
    params = j.params - 'reference',
    purged_at = now()
WHERE j.job_id IN (SELECT job_id FROM due)
RETURNING j.job_id
"""
"""Purge one batch of the oldest decided jobs past the retention (one statement; rows
another purger holds are skipped, so concurrent guards share the work)."""


async def purge_content(ledger: Ledger, retention_s: float, limit: int = 500) -> int:
    """Remove the content of up to `limit` jobs decided more than `retention_s` seconds
    ago, keeping its sha256; returns how many jobs were purged (0: none is due).
    Idempotent: a purged job is never selected again."""
    rows = await ledger.pool.fetch(_PURGE, retention_s, limit, OUTPUT_KEYS, list(TERMINAL_STATUSES))
    return len(rows)
