"""Admin reports: the SQL files under db/reports/, run against the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from rich.table import Table

from cortensor.settings import Settings

REPORTS_DIR = Path(__file__).resolve().parents[1] / "db" / "reports"


def run_report(settings: Settings, name: str) -> list[dict[str, Any]]:
    """Run db/reports/<name>.sql, the same file an admin runs with psql."""
    path = REPORTS_DIR / f"{name}.sql"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in REPORTS_DIR.glob("*.sql")))
        raise ValueError(f"no report {name!r}; reports: {known}")
    with psycopg.connect(settings.asyncpg_dsn, row_factory=dict_row) as conn:
        return list(conn.execute(path.read_text()).fetchall())


def node_report(settings: Settings) -> list[dict[str, Any]]:
    """One row per node: node_id, hw_class, status, score, jobs, agreed, disagreed, ..."""
    return run_report(settings, "node_reputation")


def render_table(title: str, rows: list[dict[str, Any]]) -> Table:
    """Rows as a rich table."""
    table = Table(title=title)
    if not rows:
        table.add_column("(no rows)")
        return table
    for column in rows[0]:
        table.add_column(
            column, justify="right" if isinstance(rows[0][column], int | float) else "left"
        )
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    return table
