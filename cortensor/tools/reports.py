"""Admin reports: the SQL files under db/reports/, run against the ledger.

A report is one SQL statement that an admin runs as it is with psql. One that needs a
value reads it as a psql variable, quoted (`:'node'`, given with `psql -v node=...`);
`run_report` sends that value as a bound parameter instead, never as SQL text.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import takewhile
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

from cortensor.errors import BadInput, LedgerUnavailable, SetupIncomplete
from cortensor.paths import resource
from cortensor.settings import Settings

ALIASES = {"nodes": "node_reputation"}
"""Other names a report answers to (`cortensor report nodes` predates the files' names)."""

# psql's :'name' (the variable as a quoted literal); '::' casts are not variables.
_VARIABLE = re.compile(r"(?<!:):'([A-Za-z_][A-Za-z0-9_]*)'")


@dataclass(frozen=True, slots=True)
class Report:
    """One db/reports/<name>.sql file."""

    name: str
    description: str
    """The file's opening comment, up to its first blank comment line."""
    statement: str
    """The SQL as psql runs it, less its comment lines."""
    parameters: tuple[str, ...]
    """The psql variables it reads, in order of first use."""

    def query(self) -> str:
        """The statement for psycopg, each :'name' a placeholder for a bound value."""
        return _VARIABLE.sub(r"%(\1)s", self.statement.replace("%", "%%"))


def _load(path: Path) -> Report:
    lines = path.read_text().splitlines()
    comments = [ln.strip().removeprefix("--").strip() for ln in lines if _is_comment(ln)]
    opening = takewhile(bool, comments)
    statement = "\n".join(ln for ln in lines if not _is_comment(ln)).strip()
    parameters = tuple(dict.fromkeys(_VARIABLE.findall(statement)))
    return Report(path.stem, " ".join(opening), statement, parameters)


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("--")


def reports() -> dict[str, Report]:
    """Every report under db/reports/, by name."""
    return {p.stem: _load(p) for p in sorted(resource("db", "reports").glob("*.sql"))}


def find_report(name: str) -> Report:
    """The report called `name` (or an alias; '-' may stand for '_'), or BadInput that
    lists them all."""
    known = reports()
    wanted = ALIASES.get(name, name.replace("-", "_"))
    if wanted not in known:
        raise BadInput(f"no report {name!r}; reports: {', '.join(sorted([*known, *ALIASES]))}")
    return known[wanted]


def run_report(
    settings: Settings, name: str, params: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Run db/reports/<name>.sql, the same file an admin runs with psql, with `params`
    for the psql variables it reads (bound, never spliced into the SQL)."""
    report = find_report(name)
    given = dict(params or {})
    missing = [p for p in report.parameters if p not in given]
    if missing:
        raise BadInput(
            f"report {report.name} needs " + ", ".join(f"--{p} (psql: -v {p}=...)" for p in missing)
        )
    extra = sorted(set(given) - set(report.parameters))
    if extra:
        raise BadInput(f"report {report.name} takes no {', '.join(f'--{p}' for p in extra)}")
    try:
        with psycopg.connect(settings.asyncpg_dsn, row_factory=dict_row) as conn:
            return list(conn.execute(report.query(), given).fetchall())
    except psycopg.errors.UndefinedTable as exc:
        raise SetupIncomplete(
            f"{exc.diag.message_primary}: the ledger lacks the report views;"
            " run `cortensor db upgrade`"
        ) from exc
    except psycopg.OperationalError as exc:
        raise LedgerUnavailable(f"cannot reach the ledger: {exc}") from exc


def to_json(value: Any) -> Any:
    """`json.dumps` default for report rows: times in ISO 8601, numbers as numbers."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def node_report(settings: Settings) -> list[dict[str, Any]]:
    """One row per node: node_id, hw_class, status, score, jobs, agreed, disagreed, ..."""
    return run_report(settings, "node_reputation")


def render_table(title: str, rows: list[dict[str, Any]]) -> Table:
    """Rows as a rich table."""
    table = Table(title=title, min_width=min(len(title), 100))
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
