"""Owners and node identities: who published each job, the key each node id means, and
the count of messages refused for a bad or missing signature.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

- `jobs.owner`: the client that published the job, from the routing key RabbitMQ's topic
  permissions let it use; its verdicts go to subjects only that client may read. Jobs
  recorded before owners existed belong to 'anonymous'.
- `node_keys`: the Ed25519 public key bound to a node id when its credentials are
  issued. From then on the id means that key; a revoked key signs nothing more.
- `refusals`: messages dropped before they reached the ledger (a missing or wrong
  signature, a result on another node's subject...), counted per publisher and reason.
  `publisher` is the node id the subject names, which NATS permissions tie to the
  connection that published it, so the rows are bounded by the registered nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("owner", sa.Text(), nullable=False, server_default=sa.text("'anonymous'")),
    )
    op.create_table(
        "node_keys",
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column(
            "bound_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_node_keys")),
        sa.CheckConstraint(
            "octet_length(public_key) = 32", name=op.f("ck_node_keys_ed25519_length")
        ),
    )
    op.create_table(
        "refusals",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("publisher", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column(
            "first_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "last_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("source", "publisher", "reason", name=op.f("pk_refusals")),
    )


def downgrade() -> None:
    op.drop_table("refusals")
    op.drop_table("node_keys")
    op.drop_column("jobs", "owner")
