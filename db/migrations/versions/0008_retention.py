"""Retention and least privilege: content can be purged, leaving its sha256, and the
reputation fold runs with its owner's rights.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

- `jobs.inputs` may be NULL: once a decided job is older than the retention period
  (Settings.retention_h) its inputs, audio, probe reference, its results' outputs and
  its verdict's output are removed (cortensor.adapters.ledger.guard.GuardLedger
  .purge_content). `jobs.inputs_sha256`, `jobs.audio_sha256` and
  `results.output_sha256` keep what they were; `jobs.purged_at` says when, and a partial
  index finds the decided jobs not purged yet.
- `reputation_events_fold()` becomes SECURITY DEFINER: the router and the guard insert
  events but may not write `node_standing` themselves (cortensor.adapters.ledger.roles),
  so the fold writes it with the rights of the ledger's owner. Its search_path is fixed,
  as a definer's must be.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _sha256(table: str, column: str) -> None:
    op.add_column(table, sa.Column(column, sa.LargeBinary(), nullable=True))
    op.create_check_constraint(
        op.f(f"ck_{table}_{column}_length"), table, f"octet_length({column}) = 32"
    )


def upgrade() -> None:
    op.alter_column("jobs", "inputs", nullable=True)
    _sha256("jobs", "inputs_sha256")
    _sha256("jobs", "audio_sha256")
    op.add_column("jobs", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        op.f("ix_jobs_unpurged"),
        "jobs",
        ["decided_at"],
        postgresql_where=sa.text("purged_at IS NULL AND decided_at IS NOT NULL"),
    )
    _sha256("results", "output_sha256")
    op.execute(
        "ALTER FUNCTION reputation_events_fold() SECURITY DEFINER SET search_path = public, pg_temp"
    )


def downgrade() -> None:
    op.execute("ALTER FUNCTION reputation_events_fold() SECURITY INVOKER RESET search_path")
    op.drop_column("results", "output_sha256")
    op.drop_index(op.f("ix_jobs_unpurged"), table_name="jobs")
    op.drop_column("jobs", "purged_at")
    op.drop_column("jobs", "audio_sha256")
    op.drop_column("jobs", "inputs_sha256")
    # Purged jobs had their inputs removed: they come back as no inputs at all.
    op.execute("UPDATE jobs SET inputs = '[]'::jsonb WHERE inputs IS NULL")
    op.alter_column("jobs", "inputs", nullable=False)
