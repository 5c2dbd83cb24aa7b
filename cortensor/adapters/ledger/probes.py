"""The probe pool's reads: recent verified jobs to re-send as probes, who held each, and
how the probes sent came out.

Functions over a Ledger's connection pool (a router's), so that probing needs no
connections of its own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from cortensor.adapters.ledger.store import Ledger
from cortensor.protocol.probing import OPTIONS, PoolProbe
from cortensor.schemas import MAX_DEADLINE_S

_POOL = """
SELECT recent.*,
       coalesce((SELECT array_agg(DISTINCT a.node_id) FROM assignments a
                 WHERE a.job_id = recent.job_id), '{}') AS holders,
       coalesce((SELECT array_agg(DISTINCT split_part(s.precision, '/', 1)) FROM results s
                 WHERE s.job_id = recent.job_id
                   AND s.node_id IN (SELECT jsonb_array_elements_text(recent.agreeing))),
                '{}') AS agreed_at
FROM unnest($1::text[]) AS m(model)
CROSS JOIN LATERAL (
    SELECT j.job_id, j.task, j.model, j.inputs, j.params, j.audio,
           extract(epoch FROM j.deadline_at - j.created_at)::float8 AS deadline_s,
           r.output, r.precision, v.payload -> 'agreeing' AS agreeing
    FROM jobs j
    JOIN verdicts v USING (job_id)
    JOIN results r ON r.result_id = v.canonical_result_id
    WHERE j.model = m.model AND j.status = 'verified' AND NOT j.probe AND NOT j.unchecked
      AND jsonb_array_length(coalesce(v.payload -> 'agreeing', '[]'::jsonb)) >= 2
      AND (jsonb_array_length(j.inputs) > 0 OR j.audio IS NOT NULL)
      AND r.error IS NULL AND r.output IS NOT NULL
    ORDER BY j.decided_at DESC NULLS LAST
    LIMIT $2
) recent
"""
"""The latest verified jobs of each model that at least two nodes agreed on (not probes,
not accepted unchecked, with their content still kept), with their canonical output and
precision, every node that held an assignment of them, and the precisions (builds left
out) of the results that agreed."""

_PROBE_HOLDERS = """
SELECT p.params ->> 'source' AS source, array_agg(DISTINCT a.node_id) AS holders
FROM jobs p JOIN assignments a USING (job_id)
WHERE p.probe AND p.params ->> 'source' = ANY($1::text[])
GROUP BY 1
"""
"""The nodes that held a probe made from each of these pool keys."""

_OUTCOMES = """
SELECT event_id, node_id, kind FROM reputation_events
WHERE probe AND event_id > $1
ORDER BY event_id
LIMIT $2
"""


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """How one probe came out for its node."""

    event_id: int
    node_id: str
    passed: bool


def _pool_probe(row: Any) -> PoolProbe:
    params = row["params"] or {}
    return PoolProbe(
        key=str(row["job_id"]),
        task=row["task"],
        model=row["model"],
        inputs=tuple(row["inputs"]),
        audio=row["audio"],
        options={k: params[k] for k in OPTIONS if k in params},
        reference=row["output"],
        precision=row["precision"],
        # A client's clock sets created_at: keep the span within what a job may ask.
        deadline_s=min(max(row["deadline_s"], 1.0), MAX_DEADLINE_S),
        holders=frozenset(row["holders"]),
        agreed_at=frozenset(row["agreed_at"]),
    )


async def verified_jobs(ledger: Ledger, models: Collection[str], per_model: int) -> list[PoolProbe]:
    """Up to `per_model` recent verified jobs of each model, as probes (see _POOL)."""
    if not models:
        return []
    rows = await ledger.pool.fetch(_POOL, sorted(models), per_model)
    return [_pool_probe(r) for r in rows]


async def probe_holders(ledger: Ledger, keys: Sequence[str]) -> dict[str, list[str]]:
    """For each pool key, the nodes that held a probe made from it."""
    if not keys:
        return {}
    rows = await ledger.pool.fetch(_PROBE_HOLDERS, list(keys))
    return {r["source"]: list(r["holders"]) for r in rows}


async def probe_outcomes(ledger: Ledger, after: int, limit: int = 10_000) -> list[ProbeOutcome]:
    """The probe events recorded since event `after` (pass: the answer agreed with the
    reference; a disagreement or a timeout fails)."""
    rows = await ledger.pool.fetch(_OUTCOMES, after, limit)
    return [ProbeOutcome(r["event_id"], r["node_id"], r["kind"] == "agreed") for r in rows]


async def last_event(ledger: Ledger) -> int:
    """The id of the latest reputation event (outcomes are read from there on)."""
    value = await ledger.pool.fetchval("SELECT coalesce(max(event_id), 0) FROM reputation_events")
    return int(value)
