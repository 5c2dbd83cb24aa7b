"""Jobs of every task, and jobs split into parts that run on several nodes at once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

A split job keeps status 'split' while its parts (child jobs, each routed, replicated
and verified like any job) run; the guard that decides its last part stitches the
parts' outputs into the parent's verdict. `params` holds a job's task options
(language, top_k) and a part's place in its parent (start_s/end_s or first_input).
`audio` holds the 16 kHz mono WAV a transcribe job's nodes receive.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "status IN ('waiting', 'running', 'verified', 'rejected', 'failed', 'inconclusive')"
_NEW = (
    "status IN ('waiting', 'running', 'split', 'verified', 'rejected', 'failed',"
    " 'inconclusive')"
)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("parent_id", sa.Uuid(), nullable=True))
    op.add_column("jobs", sa.Column("part", sa.Integer(), nullable=True))
    op.add_column(
        "jobs",
        sa.Column(
            "params",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
    )
    op.add_column("jobs", sa.Column("audio", postgresql.BYTEA(), nullable=True))
    op.create_foreign_key(
        op.f("fk_jobs_parent_id_jobs"), "jobs", "jobs", ["parent_id"], ["job_id"]
    )
    op.create_index(
        op.f("ix_jobs_parent_id"),
        "jobs",
        ["parent_id"],
        postgresql_where=sa.text("parent_id IS NOT NULL"),
    )
    op.drop_constraint(op.f("ck_jobs_status"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_status"), "jobs", _NEW)


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE status = 'split'")
    op.drop_constraint(op.f("ck_jobs_status"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_status"), "jobs", _OLD)
    op.drop_index(op.f("ix_jobs_parent_id"), table_name="jobs")
    op.drop_constraint(op.f("fk_jobs_parent_id_jobs"), "jobs", type_="foreignkey")
    op.drop_column("jobs", "audio")
    op.drop_column("jobs", "params")
    op.drop_column("jobs", "part")
    op.drop_column("jobs", "parent_id")
