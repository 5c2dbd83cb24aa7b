"""Outages are not faults of the nodes: server outages are recorded, and the
assignments they overlapped are excused rather than charged.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

- `outages`: one row per observer (a router or guard, `seen_by`) and window in which it
  could not reach a server (`postgres`, `rabbitmq`, `nats`); `ongoing` while the window
  is still open, its `ended_at` then being the last time the observer saw the server
  down (cortensor.protocol.outages).
- `assignments.sent_at`: when the router last had the broker confirm the assignment;
  NULL while it is recorded but not known to be sent. Rows written before this
  migration were sent (their router acked its jobs after the confirms).
- `assignments.status` may be `excused`: the replica was missing at its job's deadline
  for an outage, or was never sent; no reputation event is written for it.
- `jobs.extended`: the job's deadline fell inside an outage and was pushed back once.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outages",
        sa.Column("server", sa.Text(), nullable=False),
        sa.Column("seen_by", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ongoing", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("server", "seen_by", "started_at", name=op.f("pk_outages")),
        sa.CheckConstraint(
            "server IN ('postgres', 'rabbitmq', 'nats')", name=op.f("ck_outages_server")
        ),
        sa.CheckConstraint("ended_at >= started_at", name=op.f("ck_outages_ordered")),
    )
    op.create_index(op.f("ix_outages_ended_at"), "outages", ["ended_at"])
    op.add_column("assignments", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE assignments SET sent_at = created_at")
    op.drop_constraint(op.f("ck_assignments_status"), "assignments", type_="check")
    op.create_check_constraint(
        op.f("ck_assignments_status"),
        "assignments",
        "status IN ('assigned', 'done', 'timed_out', 'excused')",
    )
    op.add_column(
        "jobs", sa.Column("extended", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    op.drop_column("jobs", "extended")
    op.execute("UPDATE assignments SET status = 'timed_out' WHERE status = 'excused'")
    op.drop_constraint(op.f("ck_assignments_status"), "assignments", type_="check")
    op.create_check_constraint(
        op.f("ck_assignments_status"), "assignments", "status IN ('assigned', 'done', 'timed_out')"
    )
    op.drop_column("assignments", "sent_at")
    op.drop_index(op.f("ix_outages_ended_at"), table_name="outages")
    op.drop_table("outages")
