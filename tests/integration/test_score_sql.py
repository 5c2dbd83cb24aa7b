"""The score formula is written once in SQL (the ledger's `cortensor_score`) and once in
Python (cortensor.protocol.reputation); on any counts the two give the identical double.
The ledger's queries and views call the function rather than spell the formula again."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortensor.adapters.ledger import router as router_ledger
from cortensor.protocol.reputation import Record, Standing, score
from cortensor.settings import Settings
from cortensor.tools.reports import reports

pytestmark = [pytest.mark.postgres]


@pytest.fixture(scope="module")
def conn(ledger_settings: Settings) -> Iterator[psycopg.Connection[tuple[float]]]:
    with psycopg.connect(ledger_settings.asyncpg_dsn, autocommit=True) as c:
        yield c  # type: ignore[misc]


counts = st.integers(min_value=0, max_value=2**40)
decayed = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)


@given(agreed=counts, disagreed=counts, timed_out=counts)
@settings(max_examples=300, deadline=None)
def test_the_sql_score_of_plain_counts_is_the_python_score(
    conn: psycopg.Connection[tuple[float]], agreed: int, disagreed: int, timed_out: int
) -> None:
    row = conn.execute(
        "SELECT cortensor_score(%s::bigint, %s::bigint, %s::bigint)",
        (agreed, disagreed, timed_out),
    ).fetchone()
    assert row is not None
    assert row[0] == score(Record(agreed, disagreed, timed_out))


@given(agreed=decayed, disagreed=decayed, timed_out=decayed)
@settings(max_examples=300, deadline=None)
def test_the_sql_score_of_decayed_counts_is_the_standings_score(
    conn: psycopg.Connection[tuple[float]], agreed: float, disagreed: float, timed_out: float
) -> None:
    row = conn.execute(
        "SELECT cortensor_score(%s::double precision, %s::double precision, %s::double precision)",
        (agreed, disagreed, timed_out),
    ).fetchone()
    assert row is not None
    assert row[0] == Standing(agreed=agreed, disagreed=disagreed, timed_out=timed_out).score


def test_a_node_without_a_standing_scores_one_half(conn: psycopg.Connection[tuple[float]]) -> None:
    row = conn.execute("SELECT cortensor_score(NULL::double precision, NULL, NULL)").fetchone()
    assert row is not None
    assert row[0] == Standing().score == 0.5


# The formula's shape, (1 + agreed) / (2 + agreed + ...), in any spelling.
_FORMULA = re.compile(r"\(\s*1(\.0)?\s*\+\s*[\w.]*agreed\s*\)\s*/", re.IGNORECASE)


def test_no_report_or_ledger_query_spells_the_formula_again() -> None:
    sources = {name: report.statement for name, report in reports().items()}
    sources["adapters/ledger/router.py"] = Path(router_ledger.__file__).read_text()
    assert not {name for name, text in sources.items() if _FORMULA.search(text)}


def test_the_leaderboard_view_calls_the_function(conn: psycopg.Connection[tuple[float]]) -> None:
    row = conn.execute("SELECT pg_get_viewdef('node_leaderboard'::regclass)").fetchone()
    assert row is not None
    assert "cortensor_score(" in str(row[0])
    assert not _FORMULA.search(str(row[0]))
