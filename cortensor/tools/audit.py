"""Recomputing every node's standing from its reputation events alone.

The ledger folds each event into `node_standing` as it is inserted (a trigger, in
PostgreSQL); this folds the same events again with cortensor.protocol.reputation, in the order
the trigger saw them (`node_seq`), and compares: an admin's proof that the stored
scores follow from the append-only history and the documented formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import psycopg
from psycopg.rows import dict_row

from cortensor.protocol.reputation import Standing, record
from cortensor.settings import Settings

_EVENTS = """
SELECT node_id, model, kind, extract(epoch FROM created_at)::double precision AS at, probe
FROM reputation_events
ORDER BY node_id, node_seq NULLS FIRST, event_id
"""
_STANDING = "SELECT * FROM node_standing ORDER BY node_id, model"
_COMPARED = [f.name for f in fields(Standing)]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A stored standing field that the events do not give."""

    node_id: str
    model: str
    field: str
    stored: Any
    recomputed: Any


@dataclass(frozen=True, slots=True)
class Audit:
    """The outcome of a recomputation."""

    events: int
    standings: int
    mismatches: list[Mismatch]


def recompute(events: list[dict[str, Any]]) -> dict[tuple[str, str], Standing]:
    """Every standing, overall (model '') and per model, folded from events in order."""
    folded: dict[tuple[str, str], Standing] = {}
    for e in events:
        keys = [(e["node_id"], "")] + ([(e["node_id"], e["model"])] if e["model"] else [])
        for key in keys:
            folded[key] = record(
                folded.get(key, Standing()), e["kind"], float(e["at"]), probe=e["probe"]
            )
    return folded


def _same(stored: Any, recomputed: Any) -> bool:
    if isinstance(recomputed, float):
        return math.isclose(float(stored), recomputed, rel_tol=1e-9, abs_tol=1e-9)
    return bool(stored == recomputed)


def compare(
    stored: dict[tuple[str, str], dict[str, Any]], folded: dict[tuple[str, str], Standing]
) -> list[Mismatch]:
    """The fields where the stored standings differ from the recomputed ones."""
    mismatches = []
    for key in sorted(stored.keys() | folded.keys()):
        row, standing = stored.get(key), folded.get(key)
        if row is None or standing is None:
            where = "missing from node_standing" if row is None else "has no events"
            mismatches.append(Mismatch(*key, "row", where, None))
            continue
        for name in _COMPARED:
            if not _same(row[name], getattr(standing, name)):
                mismatches.append(Mismatch(*key, name, row[name], getattr(standing, name)))
    return mismatches


def audit(settings: Settings) -> Audit:
    """Recompute every standing from the events and compare with node_standing."""
    with psycopg.connect(settings.asyncpg_dsn, row_factory=dict_row) as conn:
        events = list(conn.execute(_EVENTS).fetchall())
        stored = {(r["node_id"], r["model"]): r for r in conn.execute(_STANDING).fetchall()}
    folded = recompute(events)
    return Audit(len(events), len(stored), compare(stored, folded))
