"""Admin reports: views over the ledger that the files under db/reports/ select from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Views hold exact values (doubles unrounded, no ORDER BY); the report files round and
order them for reading. "Real" jobs are those that are not known-answer probes. The
score of a node is the one routing uses: the posterior mean over its decayed standing
(node_standing, model ''); the plain counts beside it come from reputation_events,
undecayed, probes included. db/README.md describes every column.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LEADERBOARD = """
CREATE VIEW node_leaderboard AS
SELECT
    rank() OVER (ORDER BY b.score DESC) AS rank,
    b.node_id, b.hw_class, b.trust, b.score, b.streak, b.observations,
    b.agreed, b.disagreed, b.timed_out, b.last_seen
FROM (
    SELECT
        n.node_id,
        n.hw_class,
        coalesce(s.trust, 'probation') AS trust,
        coalesce((1 + s.agreed) / (2 + s.agreed + s.disagreed + s.timed_out), 0.5) AS score,
        coalesce(s.streak, 0) AS streak,
        coalesce(s.observations, 0) AS observations,
        coalesce(e.agreed, 0) AS agreed,
        coalesce(e.disagreed, 0) AS disagreed,
        coalesce(e.timed_out, 0) AS timed_out,
        n.last_seen
    FROM nodes AS n
    LEFT JOIN node_standing AS s ON s.node_id = n.node_id AND s.model = ''
    LEFT JOIN (
        SELECT
            node_id,
            count(*) FILTER (WHERE kind = 'agreed') AS agreed,
            count(*) FILTER (WHERE kind = 'disagreed') AS disagreed,
            count(*) FILTER (WHERE kind = 'timed_out') AS timed_out
        FROM reputation_events
        GROUP BY node_id
    ) AS e ON e.node_id = n.node_id
) AS b
"""

# Probe events count in the rate (a wrong answer to a known-answer probe is a
# disagreement too); the probe_* columns say how much of it they are.
_DISAGREEMENT = """
CREATE VIEW node_disagreement AS
SELECT
    n.node_id,
    n.hw_class,
    coalesce(s.trust, 'probation') AS trust,
    coalesce(e.checked, 0) AS checked,
    coalesce(e.disagreed, 0) AS disagreed,
    e.disagreed::double precision / nullif(e.checked, 0) AS disagreement_rate,
    coalesce(e.probe_checked, 0) AS probe_checked,
    coalesce(e.probe_disagreed, 0) AS probe_disagreed,
    coalesce(e.timed_out, 0) AS timed_out
FROM nodes AS n
LEFT JOIN node_standing AS s ON s.node_id = n.node_id AND s.model = ''
LEFT JOIN (
    SELECT
        node_id,
        count(*) FILTER (WHERE kind IN ('agreed', 'disagreed')) AS checked,
        count(*) FILTER (WHERE kind = 'disagreed') AS disagreed,
        count(*) FILTER (WHERE probe AND kind IN ('agreed', 'disagreed')) AS probe_checked,
        count(*) FILTER (WHERE probe AND kind = 'disagreed') AS probe_disagreed,
        count(*) FILTER (WHERE kind = 'timed_out') AS timed_out
    FROM reputation_events
    GROUP BY node_id
) AS e ON e.node_id = n.node_id
"""

# The window is partitioned by node, so a filter on node_id is pushed below it and a
# node's history reads only that node's events.
_HISTORY = """
CREATE VIEW node_reputation_history AS
SELECT
    h.node_id, h.node_seq, h.event_id, h.created_at, h.job_id, h.assignment_id,
    h.model, h.kind, h.probe, h.agreed, h.disagreed, h.timed_out,
    cortensor_score(h.agreed, h.disagreed, h.timed_out) AS score
FROM (
    SELECT
        r.node_id, r.node_seq, r.event_id, r.created_at, r.job_id, r.assignment_id,
        r.model, r.kind, r.probe,
        count(*) FILTER (WHERE r.kind = 'agreed') OVER w AS agreed,
        count(*) FILTER (WHERE r.kind = 'disagreed') OVER w AS disagreed,
        count(*) FILTER (WHERE r.kind = 'timed_out') OVER w AS timed_out
    FROM reputation_events AS r
    WINDOW w AS (PARTITION BY r.node_id ORDER BY r.node_seq, r.event_id ROWS UNBOUNDED PRECEDING)
) AS h
"""

# Work is counted in the class it ran on (assignments.hw_class, the node's class when it
# was assigned); nodes in the class they announce now. A job with replicas on two
# classes counts in both.
_HW_CLASSES = """
CREATE VIEW hw_class_summary AS
WITH real_assignments AS (
    SELECT a.assignment_id, a.job_id, a.hw_class
    FROM assignments AS a
    JOIN jobs AS j ON j.job_id = a.job_id
    WHERE NOT j.probe
), classes AS (
    SELECT hw_class FROM nodes
    UNION
    SELECT hw_class FROM real_assignments
), node_counts AS (
    SELECT hw_class, count(*) AS nodes FROM nodes GROUP BY hw_class
), job_stats AS (
    SELECT
        c.hw_class,
        count(*) AS jobs,
        percentile_cont(0.5) WITHIN GROUP (
            ORDER BY (extract(epoch FROM v.created_at - j.created_at) * 1000)::double precision
        ) AS p50_verdict_ms
    FROM (SELECT DISTINCT hw_class, job_id FROM real_assignments) AS c
    JOIN jobs AS j ON j.job_id = c.job_id
    LEFT JOIN verdicts AS v ON v.job_id = c.job_id
    GROUP BY c.hw_class
), result_stats AS (
    SELECT
        ra.hw_class,
        count(*) AS results,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY r.elapsed_ms) AS p50_result_ms
    FROM real_assignments AS ra
    JOIN results AS r ON r.assignment_id = ra.assignment_id
    WHERE r.error IS NULL
    GROUP BY ra.hw_class
), event_stats AS (
    SELECT
        coalesce(a.hw_class, n.hw_class) AS hw_class,
        count(*) FILTER (WHERE e.kind = 'agreed') AS agreed,
        count(*) FILTER (WHERE e.kind = 'disagreed') AS disagreed,
        count(*) FILTER (WHERE e.kind = 'timed_out') AS timed_out
    FROM reputation_events AS e
    JOIN nodes AS n ON n.node_id = e.node_id
    LEFT JOIN assignments AS a ON a.assignment_id = e.assignment_id
    WHERE NOT e.probe
    GROUP BY 1
)
SELECT
    c.hw_class,
    coalesce(nc.nodes, 0) AS nodes,
    coalesce(js.jobs, 0) AS jobs,
    coalesce(rs.results, 0) AS results,
    rs.p50_result_ms,
    js.p50_verdict_ms,
    coalesce(es.agreed, 0) AS agreed,
    coalesce(es.disagreed, 0) AS disagreed,
    coalesce(es.timed_out, 0) AS timed_out,
    es.agreed::double precision / nullif(es.agreed + es.disagreed, 0) AS agreement_rate
FROM classes AS c
LEFT JOIN node_counts AS nc ON nc.hw_class = c.hw_class
LEFT JOIN job_stats AS js ON js.hw_class = c.hw_class
LEFT JOIN result_stats AS rs ON rs.hw_class = c.hw_class
LEFT JOIN event_stats AS es ON es.hw_class = c.hw_class
"""

_UNRESOLVED = """
CREATE VIEW unresolved_jobs AS
SELECT
    j.status,
    j.reason,
    count(*) AS jobs,
    min(coalesce(j.decided_at, v.created_at)) AS first_at,
    max(coalesce(j.decided_at, v.created_at)) AS last_at
FROM jobs AS j
LEFT JOIN verdicts AS v ON v.job_id = j.job_id
WHERE j.status IN ('failed', 'inconclusive') AND NOT j.probe
GROUP BY j.status, j.reason
"""

# A split job's parent has no assignments: its parts carry them and count as the jobs.
_REPLICAS = """
CREATE VIEW replica_spend AS
SELECT
    date_trunc('hour', v.created_at) AS hour,
    count(*) AS jobs,
    sum(a.replicas)::bigint AS replicas,
    sum(a.replicas)::double precision / count(*) AS replicas_per_job,
    count(*) FILTER (WHERE a.replicas = 1) AS unreplicated
FROM jobs AS j
JOIN verdicts AS v ON v.job_id = j.job_id
JOIN (
    SELECT job_id, count(*) AS replicas FROM assignments GROUP BY job_id
) AS a ON a.job_id = j.job_id
WHERE j.status = 'verified'
  AND NOT j.probe
  AND NOT EXISTS (SELECT 1 FROM jobs AS part WHERE part.parent_id = j.job_id)
GROUP BY 1
"""

_VIEWS = {
    "node_leaderboard": _LEADERBOARD,
    "node_disagreement": _DISAGREEMENT,
    "node_reputation_history": _HISTORY,
    "hw_class_summary": _HW_CLASSES,
    "unresolved_jobs": _UNRESOLVED,
    "replica_spend": _REPLICAS,
}


def upgrade() -> None:
    for create in _VIEWS.values():
        op.execute(create)


def downgrade() -> None:
    for name in reversed(_VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
