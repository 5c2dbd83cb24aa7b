"""Admin reports: the SQL files under db/reports/, run against the ledger."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

from cortensor.paths import checkout_path
from cortensor.settings import Settings


def run_report(settings: Settings, name: str) -> list[dict[str, Any]]:
    """Run db/reports/<name>.sql, the same file an admin runs with psql."""
    reports = checkout_path("db", "reports")
    path = reports / f"{name}.sql"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in reports.glob("*.sql")))
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
    for column, value in rows[0].items():
        numeric = isinstance(value, int | float)
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    return table


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def console(stderr: bool = False) -> Console:
    """A console that does not squeeze tables when output goes to a file or a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)
