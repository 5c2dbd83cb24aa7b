"""One score formula: `cortensor_score` over the decayed standing too, called by the
leaderboard view instead of a second spelling of the formula.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

cortensor.protocol.reputation computes the same doubles in Python: `score` over plain
counts (the bigint function of 0001) and `Standing.score` over decayed ones (this
double-precision one, with the additions in the same order, so that the two round alike).
A missing standing (NULL counts) scores 0.5, as a node with no events does.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SCORE = """
CREATE FUNCTION cortensor_score(
    agreed double precision, disagreed double precision, timed_out double precision
)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (1.0::double precision + coalesce(agreed, 0))
         / (2.0::double precision + coalesce(agreed, 0) + coalesce(disagreed, 0)
            + coalesce(timed_out, 0))
$$
"""

_LEADERBOARD = """
CREATE OR REPLACE VIEW node_leaderboard AS
SELECT
    rank() OVER (ORDER BY b.score DESC) AS rank,
    b.node_id, b.hw_class, b.trust, b.score, b.streak, b.observations,
    b.agreed, b.disagreed, b.timed_out, b.last_seen
FROM (
    SELECT
        n.node_id,
        n.hw_class,
        coalesce(s.trust, 'probation') AS trust,
        {score} AS score,
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


def upgrade() -> None:
    op.execute(_SCORE)
    op.execute(_LEADERBOARD.format(score="cortensor_score(s.agreed, s.disagreed, s.timed_out)"))


def downgrade() -> None:
    op.execute(
        _LEADERBOARD.format(
            score="coalesce((1 + s.agreed) / (2 + s.agreed + s.disagreed + s.timed_out), 0.5)"
        )
    )
    op.execute(
        "DROP FUNCTION cortensor_score(double precision, double precision, double precision)"
    )
