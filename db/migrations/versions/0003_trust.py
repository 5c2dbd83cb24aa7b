"""Trust: every node's standing folded from its reputation events, probes, adaptive
replication and re-validated verdicts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

`node_standing` holds, per node overall (model '') and per node and model, the fold of
its reputation events that cortensor.protocol.reputation defines: time-decayed Beta counts, the
run of valid results, the suspicion statistic and the trust state. A BEFORE INSERT
trigger on reputation_events folds each event as it is inserted, under the standing
row's lock, and stamps the event with its place in the node's history (`node_seq`), so
that `cortensor reputation check` can fold the events again in the same order and
compare. An event for an assignment that already has one is dropped before it is
folded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The constants of cortensor.protocol.reputation, written out; a test checks that they agree.
HALF_LIFE_S = 7 * 24 * 3600.0
STEP_VALID = math.log((1 - 0.10) / (1 - 0.01))
STEP_FAILED = math.log(0.10 / 0.01)
SUSPICION_LIMIT = math.log(1000.0)
ADMIT_PROBES = 3
READMIT_PROBES = 5

_FOLD = f"""
CREATE FUNCTION cortensor_fold(
    p_node text, p_model text, p_kind text, p_at double precision, p_probe boolean
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    s node_standing%ROWTYPE;
    decay double precision;
    valid boolean := p_kind = 'agreed';
BEGIN
    INSERT INTO node_standing (node_id, model) VALUES (p_node, p_model)
    ON CONFLICT (node_id, model) DO NOTHING;
    SELECT * INTO s FROM node_standing WHERE node_id = p_node AND model = p_model FOR UPDATE;
    decay := CASE WHEN s.observations > 0
                  THEN power(0.5::double precision, greatest(p_at - s.at, 0) / {HALF_LIFE_S!r})
                  ELSE 1 END;
    s.agreed := s.agreed * decay + CASE WHEN p_kind = 'agreed' THEN 1 ELSE 0 END;
    s.disagreed := s.disagreed * decay + CASE WHEN p_kind = 'disagreed' THEN 1 ELSE 0 END;
    s.timed_out := s.timed_out * decay + CASE WHEN p_kind = 'timed_out' THEN 1 ELSE 0 END;
    s.observations := s.observations + 1;
    s.streak := CASE WHEN valid THEN s.streak + 1 ELSE 0 END;
    IF p_probe THEN
        s.probe_streak := CASE WHEN valid THEN s.probe_streak + 1 ELSE 0 END;
    END IF;
    s.suspicion := greatest(0, s.suspicion + CASE WHEN valid THEN {STEP_VALID!r}
                                                  ELSE {STEP_FAILED!r} END);
    s.at := greatest(p_at, s.at);
    IF s.trust = 'probation' THEN
        IF p_probe AND NOT valid THEN
            s.trust := 'quarantined'; s.probe_streak := 0;
        ELSIF s.probe_streak >= {ADMIT_PROBES} THEN
            s.trust := 'active'; s.probe_streak := 0;
        END IF;
    ELSIF s.trust = 'active' THEN
        IF s.suspicion >= {SUSPICION_LIMIT!r} THEN
            s.trust := 'quarantined'; s.probe_streak := 0;
        END IF;
    ELSIF s.probe_streak >= {READMIT_PROBES} THEN
        s.trust := 'active'; s.probe_streak := 0; s.suspicion := 0; s.streak := 0;
    END IF;
    UPDATE node_standing SET
        agreed = s.agreed, disagreed = s.disagreed, timed_out = s.timed_out,
        observations = s.observations, streak = s.streak, probe_streak = s.probe_streak,
        suspicion = s.suspicion, trust = s.trust, at = s.at, updated_at = now()
    WHERE node_id = p_node AND model = p_model;
    RETURN s.observations;
END
$$
"""

_EVENT = """
CREATE FUNCTION reputation_events_fold() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at double precision := extract(epoch FROM NEW.created_at);
BEGIN
    SELECT j.model, j.probe INTO NEW.model, NEW.probe FROM jobs j WHERE j.job_id = NEW.job_id;
    -- The node's overall row first, then its model's: one lock order for every writer.
    INSERT INTO node_standing (node_id, model) VALUES (NEW.node_id, '')
    ON CONFLICT (node_id, model) DO NOTHING;
    PERFORM 1 FROM node_standing WHERE node_id = NEW.node_id AND model = '' FOR UPDATE;
    -- Under that lock a concurrent copy of this event has committed or not started.
    IF NEW.assignment_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM reputation_events WHERE assignment_id = NEW.assignment_id
    ) THEN
        RETURN NULL;
    END IF;
    NEW.node_seq := cortensor_fold(NEW.node_id, '', NEW.kind, at, NEW.probe);
    IF NEW.model <> '' THEN
        PERFORM cortensor_fold(NEW.node_id, NEW.model, NEW.kind, at, NEW.probe);
    END IF;
    RETURN NEW;
END
$$
"""

_BACKFILL = """
DO $$
DECLARE
    e record;
BEGIN
    FOR e IN
        SELECT r.event_id, r.node_id, r.kind, extract(epoch FROM r.created_at) AS at,
               j.model, j.probe
        FROM reputation_events r JOIN jobs j USING (job_id)
        ORDER BY r.event_id
    LOOP
        UPDATE reputation_events
        SET model = e.model, probe = e.probe,
            node_seq = cortensor_fold(e.node_id, '', e.kind, e.at, e.probe)
        WHERE event_id = e.event_id;
        IF e.model <> '' THEN
            PERFORM cortensor_fold(e.node_id, e.model, e.kind, e.at, e.probe);
        END IF;
    END LOOP;
END
$$
"""


def upgrade() -> None:
    op.add_column(
        "jobs", sa.Column("probe", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column(
        "jobs", sa.Column("auto", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column(
        "jobs", sa.Column("unchecked", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_index(
        op.f("ix_jobs_unchecked"),
        "jobs",
        ["decided_at"],
        postgresql_where=sa.text("unchecked"),
    )
    op.add_column(
        "verdicts",
        sa.Column("revision", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "reputation_events",
        sa.Column("model", sa.Text(), nullable=False, server_default=sa.text("''")),
    )
    op.add_column(
        "reputation_events",
        sa.Column("probe", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("reputation_events", sa.Column("node_seq", sa.Integer(), nullable=True))
    op.create_table(
        "node_standing",
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("agreed", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("disagreed", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("timed_out", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("observations", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("streak", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("probe_streak", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("suspicion", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("trust", sa.Text(), nullable=False, server_default=sa.text("'probation'")),
        sa.Column("at", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("node_id", "model", name=op.f("pk_node_standing")),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.node_id"], name=op.f("fk_node_standing_node_id_nodes")
        ),
        sa.CheckConstraint(
            "trust IN ('probation', 'active', 'quarantined')",
            name=op.f("ck_node_standing_trust"),
        ),
    )
    op.execute(_FOLD)
    op.execute(_EVENT)
    # Events recorded before this revision are folded once, in the order they were made.
    op.execute("ALTER TABLE reputation_events DISABLE TRIGGER reputation_events_append_only")
    op.execute(_BACKFILL)
    op.execute("ALTER TABLE reputation_events ENABLE TRIGGER reputation_events_append_only")
    op.execute(
        """
        CREATE TRIGGER reputation_events_fold
        BEFORE INSERT ON reputation_events
        FOR EACH ROW EXECUTE FUNCTION reputation_events_fold()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER reputation_events_fold ON reputation_events")
    op.execute("DROP FUNCTION reputation_events_fold()")
    op.execute("DROP FUNCTION cortensor_fold(text, text, text, double precision, boolean)")
    op.drop_table("node_standing")
    op.drop_column("reputation_events", "node_seq")
    op.drop_column("reputation_events", "probe")
    op.drop_column("reputation_events", "model")
    op.drop_column("verdicts", "revision")
    op.drop_index(op.f("ix_jobs_unchecked"), table_name="jobs")
    op.drop_column("jobs", "unchecked")
    op.drop_column("jobs", "auto")
    op.drop_column("jobs", "probe")
