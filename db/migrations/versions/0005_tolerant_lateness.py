"""Standing: missed deadlines judged apart from wrong answers, and repeat offenders kept
out.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

The fold of cortensor.protocol.reputation changed, and `cortensor_fold` (migration 0003)
is replaced by the same fold in PL/pgSQL:

- a missed deadline no longer feeds the suspicion test nor resets the streak: it takes
  LATE_STREAK_COST off the streak and feeds `lateness`, a tolerant CUSUM of its own that
  quarantines at LATENESS_LIMIT (PROBATION_LATENESS_LIMIT on probation);
- a wrong answer that quarantines a node (a failed probe on probation, the suspicion
  test) counts in `offences`, and a node with MAX_OFFENCES of them is not readmitted.

Every standing is then folded again from the events, in the order they were made, and
each event gets its new place in its node's history (`node_seq`), so that `cortensor
reputation check` finds the stored standings equal to the new fold's. The downgrade
restores 0003's function and folds again with it.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The constants of cortensor.protocol.reputation, written out; a test checks that they agree.
HALF_LIFE_S = 7 * 24 * 3600.0
STEP_VALID = math.log((1 - 0.10) / (1 - 0.01))
STEP_FAILED = math.log(0.10 / 0.01)
SUSPICION_LIMIT = math.log(1000.0)
STEP_LATE = math.log(0.95 / 0.25)
STEP_ON_TIME = math.log((1 - 0.95) / (1 - 0.25))
LATENESS_LIMIT = 53.0
PROBATION_LATENESS_LIMIT = 6.0
LATE_STREAK_COST = 2
ADMIT_PROBES = 3
READMIT_PROBES = 5
MAX_OFFENCES = 2

_FOLD = f"""
CREATE OR REPLACE FUNCTION cortensor_fold(
    p_node text, p_model text, p_kind text, p_at double precision, p_probe boolean
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    s node_standing%ROWTYPE;
    decay double precision;
    valid boolean := p_kind = 'agreed';
    late boolean := p_kind = 'timed_out';
    wrong boolean := p_kind = 'disagreed';
BEGIN
    INSERT INTO node_standing (node_id, model) VALUES (p_node, p_model)
    ON CONFLICT (node_id, model) DO NOTHING;
    SELECT * INTO s FROM node_standing WHERE node_id = p_node AND model = p_model FOR UPDATE;
    decay := CASE WHEN s.observations > 0
                  THEN power(0.5::double precision, greatest(p_at - s.at, 0) / {HALF_LIFE_S!r})
                  ELSE 1 END;
    s.agreed := s.agreed * decay + CASE WHEN valid THEN 1 ELSE 0 END;
    s.disagreed := s.disagreed * decay + CASE WHEN wrong THEN 1 ELSE 0 END;
    s.timed_out := s.timed_out * decay + CASE WHEN late THEN 1 ELSE 0 END;
    s.observations := s.observations + 1;
    IF late THEN
        s.lateness := s.lateness + {STEP_LATE!r};
        s.streak := greatest(s.streak - {LATE_STREAK_COST}, 0);
    ELSE
        s.suspicion := greatest(0, s.suspicion + CASE WHEN valid THEN {STEP_VALID!r}
                                                      ELSE {STEP_FAILED!r} END);
        s.lateness := greatest(0, s.lateness + {STEP_ON_TIME!r});
        s.streak := CASE WHEN valid THEN s.streak + 1 ELSE 0 END;
    END IF;
    IF p_probe THEN
        s.probe_streak := CASE WHEN valid THEN s.probe_streak + 1 ELSE 0 END;
    END IF;
    s.at := greatest(p_at, s.at);
    IF s.trust = 'probation' THEN
        IF p_probe AND wrong THEN
            s.trust := 'quarantined'; s.probe_streak := 0; s.offences := s.offences + 1;
        ELSIF s.lateness >= {PROBATION_LATENESS_LIMIT!r} THEN
            s.trust := 'quarantined'; s.probe_streak := 0;
        ELSIF s.probe_streak >= {ADMIT_PROBES} THEN
            s.trust := 'active'; s.probe_streak := 0;
        END IF;
    ELSIF s.trust = 'active' THEN
        IF s.suspicion >= {SUSPICION_LIMIT!r} THEN
            s.trust := 'quarantined'; s.probe_streak := 0; s.offences := s.offences + 1;
        ELSIF s.lateness >= {LATENESS_LIMIT!r} THEN
            s.trust := 'quarantined'; s.probe_streak := 0;
        END IF;
    ELSIF s.offences < {MAX_OFFENCES} AND s.probe_streak >= {READMIT_PROBES} THEN
        s.trust := 'active'; s.probe_streak := 0; s.suspicion := 0; s.lateness := 0;
        s.streak := 0;
    END IF;
    UPDATE node_standing SET
        agreed = s.agreed, disagreed = s.disagreed, timed_out = s.timed_out,
        observations = s.observations, streak = s.streak, probe_streak = s.probe_streak,
        suspicion = s.suspicion, lateness = s.lateness, offences = s.offences,
        trust = s.trust, at = s.at, updated_at = now()
    WHERE node_id = p_node AND model = p_model;
    RETURN s.observations;
END
$$
"""

_REFOLD = """
DO $$
DECLARE
    e record;
BEGIN
    DELETE FROM node_standing;
    FOR e IN
        SELECT r.event_id, r.node_id, r.kind, extract(epoch FROM r.created_at) AS at,
               r.model, r.probe
        FROM reputation_events r
        ORDER BY r.node_id, r.node_seq NULLS FIRST, r.event_id
    LOOP
        UPDATE reputation_events
        SET node_seq = cortensor_fold(e.node_id, '', e.kind, e.at, e.probe)
        WHERE event_id = e.event_id;
        IF e.model <> '' THEN
            PERFORM cortensor_fold(e.node_id, e.model, e.kind, e.at, e.probe);
        END IF;
    END LOOP;
END
$$
"""


def _refold() -> None:
    # Stamping node_seq again is an UPDATE, which the append-only trigger refuses.
    op.execute("ALTER TABLE reputation_events DISABLE TRIGGER reputation_events_append_only")
    op.execute(_REFOLD)
    op.execute("ALTER TABLE reputation_events ENABLE TRIGGER reputation_events_append_only")


def upgrade() -> None:
    op.add_column(
        "node_standing",
        sa.Column("lateness", sa.Double(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "node_standing",
        sa.Column("offences", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.execute(_FOLD)
    _refold()


def downgrade() -> None:
    # 0003's function, from its own file: its fold is the one to restore.
    path = Path(__file__).with_name("0003_trust.py")
    spec = importlib.util.spec_from_file_location("cortensor_migration_0003", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    trust = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trust)
    op.execute("DROP FUNCTION cortensor_fold(text, text, text, double precision, boolean)")
    op.drop_column("node_standing", "offences")
    op.drop_column("node_standing", "lateness")
    op.execute(trust._FOLD)
    _refold()
