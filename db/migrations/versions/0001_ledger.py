"""The ledger: nodes, jobs, assignments, results, verdicts, reputation events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written by hand; cortensor.adapters.ledger.tables mirrors it, and a test checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")

# Every name is final (op.f): env.py's target_metadata carries a naming convention, which
# would otherwise be applied again on top of these names (ck_nodes_ck_nodes_status).


def _tstz(name: str, *, nullable: bool = False, now: bool = False) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable, server_default=NOW if now else None
    )


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("hw_class", sa.Text(), nullable=False),
        sa.Column("precision", sa.Text(), nullable=False),
        sa.Column(
            "models", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")
        ),
        sa.Column("capacity", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'up'")),
        _tstz("first_seen", now=True),
        _tstz("last_seen", now=True),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_nodes")),
        sa.CheckConstraint("status IN ('up', 'draining')", name=op.f("ck_nodes_status")),
    )

    op.create_table(
        "jobs",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("redundancy", sa.Integer(), nullable=False),
        sa.Column("hw_class", sa.Text(), nullable=False),
        sa.Column("inputs", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=sa.text("''")),
        _tstz("created_at", now=True),
        _tstz("deadline_at"),
        _tstz("decided_at", nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_jobs")),
        sa.CheckConstraint(
            "status IN ('waiting', 'running', 'verified', 'rejected', 'failed', 'inconclusive')",
            name=op.f("ck_jobs_status"),
        ),
    )
    op.create_index(
        op.f("ix_jobs_open_deadline_at"),
        "jobs",
        ["deadline_at"],
        postgresql_where=sa.text("status IN ('waiting', 'running')"),
    )

    op.create_table(
        "assignments",
        sa.Column("assignment_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("hw_class", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'assigned'")),
        _tstz("created_at", now=True),
        _tstz("deadline_at"),
        _tstz("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("assignment_id", name=op.f("pk_assignments")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.job_id"], name=op.f("fk_assignments_job_id_jobs")
        ),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_assignments_node_id_nodes")
        ),
        sa.UniqueConstraint("job_id", "node_id", name=op.f("uq_assignments_job_id_node_id")),
        sa.CheckConstraint(
            "status IN ('assigned', 'done', 'timed_out')", name=op.f("ck_assignments_status")
        ),
    )
    op.create_index(
        op.f("ix_assignments_pending_deadline_at"),
        "assignments",
        ["deadline_at"],
        postgresql_where=sa.text("status = 'assigned'"),
    )
    op.create_index(op.f("ix_assignments_node_id"), "assignments", ["node_id"])

    op.create_table(
        "results",
        sa.Column("result_id", sa.Uuid(), nullable=False),
        sa.Column("assignment_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("precision", sa.Text(), nullable=False),
        sa.Column("output", postgresql.JSONB(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("elapsed_ms", sa.Double(), nullable=False, server_default=sa.text("0")),
        _tstz("received_at", now=True),
        sa.PrimaryKeyConstraint("result_id", name=op.f("pk_results")),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.assignment_id"],
            name=op.f("fk_results_assignment_id_assignments"),
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name=op.f("fk_results_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_results_node_id_nodes")
        ),
        sa.UniqueConstraint("assignment_id", name=op.f("uq_results_assignment_id")),
    )
    op.create_index(op.f("ix_results_job_id"), "results", ["job_id"])

    op.create_table(
        "verdicts",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("canonical_result_id", sa.Uuid(), nullable=True),
        sa.Column("replicas", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        _tstz("created_at", now=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_verdicts")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name=op.f("fk_verdicts_job_id_jobs")),
        sa.CheckConstraint(
            "status IN ('verified', 'rejected', 'failed', 'inconclusive')",
            name=op.f("ck_verdicts_status"),
        ),
    )

    op.create_table(
        "reputation_events",
        sa.Column("event_id", sa.BigInteger(), nullable=False, autoincrement=True),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("assignment_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        _tstz("created_at", now=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_reputation_events")),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_reputation_events_node_id_nodes")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.job_id"], name=op.f("fk_reputation_events_job_id_jobs")
        ),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.assignment_id"],
            name=op.f("fk_reputation_events_assignment_id_assignments"),
        ),
        sa.UniqueConstraint("assignment_id", name=op.f("uq_reputation_events_assignment_id")),
        sa.CheckConstraint(
            "kind IN ('agreed', 'disagreed', 'timed_out')", name=op.f("ck_reputation_events_kind")
        ),
    )
    op.create_index(
        op.f("ix_reputation_events_node_id_created_at"),
        "reputation_events",
        ["node_id", "created_at"],
    )

    # History is never rewritten, so every score can be recomputed from the events.
    op.execute(
        """
        CREATE FUNCTION reputation_events_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'reputation_events is append-only'
                USING HINT = 'record a new event instead of changing or removing one';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER reputation_events_append_only
        BEFORE UPDATE OR DELETE ON reputation_events
        FOR EACH ROW EXECUTE FUNCTION reputation_events_append_only()
        """
    )

    # Posterior mean of a Beta(1, 1) prior. Float arithmetic, operand for operand the
    # same as cortensor.protocol.reputation.score, so the two give the identical double.
    op.execute(
        """
        CREATE FUNCTION cortensor_score(agreed bigint, disagreed bigint, timed_out bigint)
        RETURNS double precision
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        AS $$
            SELECT (agreed + 1.0::double precision)
                 / ((agreed + disagreed + timed_out) + 2.0::double precision)
        $$
        """
    )

    op.execute(
        """
        CREATE VIEW node_reputation_report AS
        SELECT
            n.node_id,
            n.hw_class,
            CASE
                WHEN n.last_seen <= now() - interval '10 seconds' THEN 'offline'
                WHEN n.status = 'up' THEN 'live'
                WHEN n.status = 'draining' THEN 'draining'
                ELSE 'offline'
            END AS status,
            round(
                cortensor_score(
                    coalesce(e.agreed, 0), coalesce(e.disagreed, 0), coalesce(e.timed_out, 0)
                )::numeric,
                4
            )::double precision AS score,
            coalesce(a.jobs, 0) AS jobs,
            coalesce(e.agreed, 0) AS agreed,
            coalesce(e.disagreed, 0) AS disagreed,
            coalesce(e.timed_out, 0) AS timed_out,
            n.last_seen
        FROM nodes AS n
        LEFT JOIN (
            SELECT
                node_id,
                count(*) FILTER (WHERE kind = 'agreed') AS agreed,
                count(*) FILTER (WHERE kind = 'disagreed') AS disagreed,
                count(*) FILTER (WHERE kind = 'timed_out') AS timed_out
            FROM reputation_events
            GROUP BY node_id
        ) AS e ON e.node_id = n.node_id
        LEFT JOIN (
            SELECT node_id, count(DISTINCT job_id) AS jobs
            FROM assignments
            GROUP BY node_id
        ) AS a ON a.node_id = n.node_id
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS node_reputation_report")
    op.execute("DROP FUNCTION IF EXISTS cortensor_score(bigint, bigint, bigint)")
    # Dropping the table drops its trigger with it.
    op.drop_table("reputation_events")
    op.execute("DROP FUNCTION IF EXISTS reputation_events_append_only()")
    op.drop_table("verdicts")
    op.drop_table("results")
    op.drop_table("assignments")
    op.drop_table("jobs")
    op.drop_table("nodes")
