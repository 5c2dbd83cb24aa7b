"""The admin reports under db/reports/, on a ledger seeded with a small known history.

Every report runs twice, as an admin runs it (psql on the file as it is) and through
`cortensor report NAME --json`, and both must give the rows worked out by hand below.

The seed (2026-01-01, UTC). Nodes n-a, n-b, n-e are cpu-int8; n-c, n-d cpu-fp32; n-e
has never worked. Each replica: node, elapsed ms, reputation event.

    j1   10:00:00 -> verified 10:00:02   a 100 agreed, b 200 agreed, c 400 disagreed
    p8   10:15:00 -> verified 10:15:01   probe: c 90 disagreed (a wrong known answer)
    j2   10:30:00 -> verified 10:30:01   a 150 agreed (one replica, adaptive)
    j3   11:00:00 -> verified 11:00:05   b timed out (event 11:00:04), then a 120, c 300,
                                          d 500 agreed: four replicas spent
    j4   11:10:00 -> inconclusive 11:10:03   a 110, c 350, d an error (5 ms); no events
    j5   11:20:00 -> failed 11:20:30     no nodes
    j6   11:59:00 -> failed 12:00:00     no nodes, the same reason
    sp   12:00:00 -> verified 12:00:02   split job: parts sp1 (a 130 agreed, 12:00:01)
                                          and sp2 (b 140 agreed, 12:00:02)
    p9   12:20:00 -> failed 12:30:00     probe, no nodes, the same reason as j5
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cortensor.adapters.ledger import migrate
from cortensor.errors import BadInput
from cortensor.protocol.reputation import fold
from cortensor.settings import Settings
from cortensor.tools.reports import find_report, reports, run_report
from tests.conftest import make_settings

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "cortensor")

EMBED = "all-minilm-l6-v2"
FAIL = "no eligible nodes before the deadline: needs 3 more distinct live node(s) of class any"
NO_MAJORITY = (
    "no strict majority: the largest agreeing group has 1 of 3 replicas (2 arrived), 2 needed"
)
NODES = {
    "n-a": "cpu-int8",
    "n-b": "cpu-int8",
    "n-c": "cpu-fp32",
    "n-d": "cpu-fp32",
    "n-e": "cpu-int8",
}


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 1, 1, hour, minute, second, tzinfo=UTC)


LAST_SEEN = at(12, 30)


@dataclass(frozen=True)
class Job:
    key: str
    status: str
    created: datetime
    decided: datetime
    redundancy: int = 3
    reason: str = ""
    model: str = EMBED
    probe: bool = False
    auto: bool = False
    parent: str | None = None
    part: int | None = None


@dataclass(frozen=True)
class Replica:
    job: str
    node: str
    elapsed_ms: float | None
    """None: it never answered."""
    event: str | None = None
    event_at: datetime | None = None
    error: str | None = None


JOBS = [
    Job("j1", "verified", at(10), at(10, 0, 2), reason="2 of 3 replicas agree"),
    Job("p8", "verified", at(10, 15), at(10, 15, 1), redundancy=1, probe=True),
    Job("j2", "verified", at(10, 30), at(10, 30, 1), redundancy=1, auto=True),
    Job("j3", "verified", at(11), at(11, 0, 5), model="whisper-base"),
    Job("j4", "inconclusive", at(11, 10), at(11, 10, 3), reason=NO_MAJORITY),
    Job("j5", "failed", at(11, 20), at(11, 20, 30), reason=FAIL),
    Job("j6", "failed", at(11, 59), at(12), reason=FAIL),
    Job("sp", "verified", at(12), at(12, 0, 2), redundancy=1),
    Job("sp1", "verified", at(12), at(12, 0, 1), redundancy=1, parent="sp", part=0),
    Job("sp2", "verified", at(12), at(12, 0, 2), redundancy=1, parent="sp", part=1),
    Job("p9", "failed", at(12, 20), at(12, 30), probe=True, reason=FAIL),
]
# In the order the events happened: the fold trigger numbers each node's events so.
REPLICAS = [
    Replica("j1", "n-a", 100, "agreed", at(10, 0, 2)),
    Replica("j1", "n-b", 200, "agreed", at(10, 0, 2)),
    Replica("j1", "n-c", 400, "disagreed", at(10, 0, 2)),
    Replica("p8", "n-c", 90, "disagreed", at(10, 15, 1)),
    Replica("j2", "n-a", 150, "agreed", at(10, 30, 1)),
    Replica("j3", "n-b", None, "timed_out", at(11, 0, 4)),
    Replica("j3", "n-a", 120, "agreed", at(11, 0, 5)),
    Replica("j3", "n-c", 300, "agreed", at(11, 0, 5)),
    Replica("j3", "n-d", 500, "agreed", at(11, 0, 5)),
    Replica("j4", "n-a", 110),
    Replica("j4", "n-c", 350),
    Replica("j4", "n-d", 5, error="out of memory"),
    Replica("sp1", "n-a", 130, "agreed", at(12, 0, 1)),
    Replica("sp2", "n-b", 140, "agreed", at(12, 0, 2)),
]
JOB_IDS = {job.key: uuid.uuid5(uuid.NAMESPACE_URL, f"cortensor-test/{job.key}") for job in JOBS}


def _seed(settings: Settings) -> None:
    """Write the history above with plain SQL; the fold trigger fills node_standing."""
    with psycopg.connect(settings.asyncpg_dsn) as conn:
        for node_id, hw_class in NODES.items():
            conn.execute(
                "INSERT INTO nodes (node_id, hw_class, precision, first_seen, last_seen)"
                " VALUES (%s, %s, %s, %s, %s)",
                (node_id, hw_class, hw_class.split("-")[1], at(9), LAST_SEEN),
            )
        for job in JOBS:  # a parent before its parts
            conn.execute(
                "INSERT INTO jobs (job_id, task, model, redundancy, hw_class, inputs, status,"
                " reason, created_at, deadline_at, decided_at, parent_id, part, probe, auto,"
                " unchecked)"
                " VALUES (%s, %s, %s, %s, 'any', '[]', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    JOB_IDS[job.key],
                    "transcribe" if job.model == "whisper-base" else "embed",
                    job.model,
                    job.redundancy,
                    job.status,
                    job.reason,
                    job.created,
                    job.created + timedelta(minutes=1),
                    job.decided,
                    JOB_IDS[job.parent] if job.parent else None,
                    job.part,
                    job.probe,
                    job.auto,
                    job.auto,
                ),
            )
            conn.execute(
                "INSERT INTO verdicts (job_id, status, reason, payload, created_at, published_at)"
                " VALUES (%s, %s, %s, '{}', %s, %s)",
                (JOB_IDS[job.key], job.status, job.reason, job.decided, job.decided),
            )
        created = {job.key: job.created for job in JOBS}
        for r in REPLICAS:
            assignment_id = uuid.uuid4()
            conn.execute(
                "INSERT INTO assignments (assignment_id, job_id, node_id, hw_class, status,"
                " created_at, deadline_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    assignment_id,
                    JOB_IDS[r.job],
                    r.node,
                    NODES[r.node],
                    "timed_out" if r.elapsed_ms is None else "done",
                    created[r.job],
                    created[r.job] + timedelta(seconds=4),
                ),
            )
            if r.elapsed_ms is not None:
                conn.execute(
                    "INSERT INTO results (result_id, assignment_id, job_id, node_id, precision,"
                    " output, error, elapsed_ms) VALUES (%s, %s, %s, %s, 'int8', %s, %s, %s)",
                    (
                        uuid.uuid4(),
                        assignment_id,
                        JOB_IDS[r.job],
                        r.node,
                        None if r.error else '{"vectors": [[1.0]]}',
                        r.error,
                        r.elapsed_ms,
                    ),
                )
            if r.event is not None:
                conn.execute(
                    "INSERT INTO reputation_events (node_id, job_id, assignment_id, kind,"
                    " created_at) VALUES (%s, %s, %s, %s, %s)",
                    (r.node, JOB_IDS[r.job], assignment_id, r.event, r.event_at),
                )


@pytest.fixture(scope="module")
def seeded(ledger_settings: Settings) -> Settings:
    """This module's ledger, with the history above."""
    _seed(ledger_settings)
    return ledger_settings


# -- the two ways to run a report ---------------------------------------------------------

Rows = list[dict[str, Any]]


def _env(settings: Settings) -> dict[str, str]:
    # PGTZ: the hour buckets and psql's printed times are in the session's time zone.
    return {**os.environ, "CORTENSOR_DATABASE_URL": settings.database_url, "PGTZ": "UTC"}


def run_psql(settings: Settings, name: str, node: str | None = None) -> Rows:
    """psql on db/reports/<name>.sql as it is (CSV output, to read it back)."""
    psql = shutil.which("psql")
    assert psql, "psql is not on PATH (apt-get install -y postgresql-client)"
    variables = [] if node is None else ["-v", f"node={node}"]
    args = ["-X", "-v", "ON_ERROR_STOP=1", "--csv", "-d", settings.asyncpg_dsn, *variables]
    done = subprocess.run(
        [psql, *args, "-f", f"db/reports/{name}.sql"],
        cwd=REPO,
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return list(csv.DictReader(io.StringIO(done.stdout)))


def run_cli(settings: Settings, name: str, node: str | None = None) -> Rows:
    """`cortensor report NAME [--node NODE] --json`."""
    done = cortensor(settings, "report", name, *(["--node", node] if node else []), "--json")
    assert done.returncode == 0, done.stderr
    rows: Rows = json.loads(done.stdout)
    return rows


def cortensor(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


RUNNERS: dict[str, Callable[..., Rows]] = {"psql": run_psql, "cli": run_cli}


def _read(cell: Any, like: Any) -> Any:
    """A cell from psql (text) or from JSON, as the Python type of the expected value."""
    if like is None:
        return None if cell in ("", None) else cell
    if isinstance(like, bool):
        return cell if isinstance(cell, bool) else {"t": True, "f": False}[cell]
    if isinstance(like, int):
        return int(cell)
    if isinstance(like, float):
        return float(cell)
    if isinstance(like, datetime):
        return datetime.fromisoformat(cell)
    if isinstance(like, uuid.UUID):
        return uuid.UUID(cell)
    return cell


def _check(rows: Rows, columns: tuple[str, ...], expected: list[tuple[Any, ...]]) -> None:
    assert len(rows) == len(expected), rows
    assert tuple(rows[0]) == columns
    got = [
        tuple(_read(row[c], like) for c, like in zip(columns, want, strict=True))
        for row, want in zip(rows, expected, strict=True)
    ]
    assert got == expected


# -- what each report must show, worked out from the seed ----------------------------------

# Scores are the decayed standing (half-life a week), so a node's older events weigh a
# little less: n-a's 4 agreed events over two hours weigh 3.9815, (1 + 3.9815) / (2 +
# 3.9815) = 0.8328, where undecayed counts would give 5/6 = 0.8333. n-d's one event is
# not decayed: 2/3. n-b: 2 agreed, 1 timed out, 0.5998 (3/5 undecayed). n-e: no events,
# 0.5. n-c: quarantined on its failed probe while in probation; 1 agreed, 2 disagreed,
# 0.4006 (2/5 undecayed). Streak: valid results in a row since the last failure.
LEADERBOARD = (
    (
        "rank",
        "node_id",
        "hw_class",
        "trust",
        "score",
        "streak",
        "observations",
        "agreed",
        "disagreed",
        "timed_out",
        "last_seen",
    ),
    [
        (1, "n-a", "cpu-int8", "probation", 0.8328, 4, 4, 4, 0, 0, LAST_SEEN),
        (2, "n-d", "cpu-fp32", "probation", 0.6667, 1, 1, 1, 0, 0, LAST_SEEN),
        (3, "n-b", "cpu-int8", "probation", 0.5998, 1, 3, 2, 0, 1, LAST_SEEN),
        (4, "n-e", "cpu-int8", "probation", 0.5, 0, 0, 0, 0, 0, LAST_SEEN),
        (5, "n-c", "cpu-fp32", "quarantined", 0.4006, 1, 3, 1, 2, 0, LAST_SEEN),
    ],
)

# n-c: j1 and the probe p8 disagreed, j3 agreed: 2 of 3 checked, one of them a probe.
# n-b's timeout is not a check. n-e has nothing checked: no rate, listed last.
DISAGREEMENT = (
    (
        "node_id",
        "hw_class",
        "trust",
        "checked",
        "disagreed",
        "disagreement_rate",
        "probe_checked",
        "probe_disagreed",
        "timed_out",
    ),
    [
        ("n-c", "cpu-fp32", "quarantined", 3, 2, 0.6667, 1, 1, 0),
        ("n-a", "cpu-int8", "probation", 4, 0, 0.0, 0, 0, 0),
        ("n-b", "cpu-int8", "probation", 2, 0, 0.0, 0, 0, 1),
        ("n-d", "cpu-fp32", "probation", 1, 0, 0.0, 0, 0, 0),
        ("n-e", "cpu-int8", "probation", 0, 0, None, 0, 0, 0),
    ],
)

# Probes out of every column but nodes.
# cpu-fp32: jobs j1, j3, j4; answers 400, 300, 350 (c) and 500 (d; d's error on j4 is
# not an answer): median 375; verdicts after 2 s, 5 s, 3 s: median 3 s; events: c
# disagreed on j1, c and d agreed on j3: 2 / 3.
# cpu-int8: jobs j1, j2, j3, j4, sp1, sp2; answers 100, 150, 120, 110, 130 (a) and 200,
# 140 (b): median 130; verdicts after 2, 1, 5, 3, 1, 2 s: median 2 s; 6 agreed, b's
# timeout on j3.
HW_CLASSES = (
    (
        "hw_class",
        "nodes",
        "jobs",
        "results",
        "p50_result_ms",
        "p50_verdict_ms",
        "agreed",
        "disagreed",
        "timed_out",
        "agreement_rate",
    ),
    [
        ("cpu-fp32", 2, 3, 4, 375.0, 3000.0, 2, 1, 0, 0.6667),
        ("cpu-int8", 3, 6, 7, 130.0, 2000.0, 6, 0, 1, 1.0),
    ],
)

# The failed probe p9 is left out, so the failures' latest stays j6's.
UNRESOLVED = (
    ("status", "reason", "jobs", "first_at", "last_at"),
    [
        ("failed", FAIL, 2, at(11, 20, 30), at(12)),
        ("inconclusive", NO_MAJORITY, 1, at(11, 10, 3), at(11, 10, 3)),
    ],
)

# 10:00: j1 (3) and j2 (1), the probe p8 left out. 11:00: j3, whose timed-out replica
# was sent again (4). 12:00: the parts sp1 and sp2 (1 each), not their parent sp.
REPLICAS_SPENT = (
    ("hour", "jobs", "replicas", "replicas_per_job", "unreplicated"),
    [
        (at(10), 2, 4, 2.0, 1),
        (at(11), 1, 4, 4.0, 0),
        (at(12), 2, 2, 1.0, 2),
    ],
)

HISTORY_COLUMNS = (
    "node_seq",
    "created_at",
    "job_id",
    "model",
    "kind",
    "probe",
    "agreed",
    "disagreed",
    "timed_out",
    "score",
)
# The running counts after each event and (agreed + 1) / (all + 2) over them.
HISTORY = {
    "n-c": [
        (1, at(10, 0, 2), JOB_IDS["j1"], EMBED, "disagreed", False, 0, 1, 0, 0.3333),
        (2, at(10, 15, 1), JOB_IDS["p8"], EMBED, "disagreed", True, 0, 2, 0, 0.25),
        (3, at(11, 0, 5), JOB_IDS["j3"], "whisper-base", "agreed", False, 1, 2, 0, 0.4),
    ],
    "n-b": [
        (1, at(10, 0, 2), JOB_IDS["j1"], EMBED, "agreed", False, 1, 0, 0, 0.6667),
        (2, at(11, 0, 4), JOB_IDS["j3"], "whisper-base", "timed_out", False, 1, 0, 1, 0.5),
        (3, at(12, 0, 2), JOB_IDS["sp2"], EMBED, "agreed", False, 2, 0, 1, 0.6),
    ],
}

EXPECTED = {
    "leaderboard": LEADERBOARD,
    "disagreement": DISAGREEMENT,
    "hw_classes": HW_CLASSES,
    "unresolved": UNRESOLVED,
    "replicas": REPLICAS_SPENT,
}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name", EXPECTED)
def test_report_shows_the_seeded_history(seeded: Settings, name: str, runner: str) -> None:
    columns, rows = EXPECTED[name]

    _check(RUNNERS[runner](seeded, name), columns, rows)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("node", HISTORY)
def test_node_history_shows_the_score_move(seeded: Settings, node: str, runner: str) -> None:
    _check(RUNNERS[runner](seeded, "node_history", node), HISTORY_COLUMNS, HISTORY[node])


def test_leaderboard_scores_are_the_python_fold(seeded: Settings) -> None:
    events: dict[str, list[tuple[Any, float, bool]]] = {}
    probes = {JOB_IDS[j.key] for j in JOBS if j.probe}
    for r in REPLICAS:
        if r.event is not None and r.event_at is not None:
            probe = JOB_IDS[r.job] in probes
            events.setdefault(r.node, []).append((r.event, r.event_at.timestamp(), probe))

    rows = {row["node_id"]: row for row in run_report(seeded, "leaderboard")}

    for node_id, history in events.items():
        standing = fold(history)
        assert rows[node_id]["score"] == round(standing.score, 4)
        assert rows[node_id]["trust"] == standing.trust
        assert rows[node_id]["streak"] == standing.streak


def test_history_of_a_node_without_events_is_empty(seeded: Settings) -> None:
    assert run_report(seeded, "node_history", {"node": "n-e"}) == []
    assert run_cli(seeded, "node_history", "no-such-node") == []


def test_the_node_is_a_bound_value_not_sql(seeded: Settings) -> None:
    sneaky = "n-c' OR true OR node_id = '"

    assert run_report(seeded, "node_history", {"node": sneaky}) == []
    assert run_psql(seeded, "node_history", sneaky) == []
    assert len(run_report(seeded, "node_history", {"node": "n-c"})) == 3


def test_the_older_report_still_answers_to_nodes(seeded: Settings) -> None:
    rows = {row["node_id"]: row for row in run_cli(seeded, "nodes")}

    # node_reputation_report: undecayed counts, (4 + 1) / (4 + 2).
    assert set(rows) == set(NODES)
    assert rows["n-a"]["score"] == 0.8333
    assert rows["n-a"]["jobs"] == 5


def test_an_unknown_report_lists_the_known_ones(seeded: Settings) -> None:
    done = cortensor(seeded, "report", "leaderbored")

    assert done.returncode == 2
    assert "no report 'leaderbored'" in done.stderr
    for name in [*EXPECTED, "node_history", "node_reputation", "nodes"]:
        assert name in done.stderr
    with pytest.raises(BadInput, match="no report"):
        run_report(seeded, "../reports/leaderboard")


def test_the_history_needs_a_node(seeded: Settings) -> None:
    done = cortensor(seeded, "report", "node_history")

    assert done.returncode == 2
    assert "report node_history needs --node" in done.stderr
    assert done.stdout == ""


def test_other_reports_take_no_node(seeded: Settings) -> None:
    done = cortensor(seeded, "report", "leaderboard", "--node", "n-a")

    assert done.returncode == 2
    assert "report leaderboard takes no --node" in done.stderr


def test_without_a_name_the_reports_are_listed(seeded: Settings) -> None:
    done = cortensor(seeded, "report")

    assert done.returncode == 0, done.stderr
    for name in reports():
        assert name in done.stdout
    assert "--node" in done.stdout


def test_a_table_by_default(seeded: Settings) -> None:
    done = cortensor(seeded, "report", "hw-classes")

    assert done.returncode == 0, done.stderr
    assert "cpu-fp32" in done.stdout
    assert "375.0000" in done.stdout


def test_psql_variables_become_bound_parameters() -> None:
    report = find_report("node_history")

    assert report.parameters == ("node",)
    assert "%(node)s" in report.query()
    assert ":'node'" not in report.query()
    assert "score::numeric" in report.query()
    assert "--" not in report.statement
    assert all(not r.parameters for n, r in reports().items() if n != "node_history")


@pytest.fixture
def fresh_ledger() -> Iterator[Settings]:
    settings = make_settings()
    migrate.upgrade(settings)
    try:
        yield settings
    finally:
        migrate.drop_database(settings)


def _views(settings: Settings) -> set[str]:
    with psycopg.connect(settings.asyncpg_dsn) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'"
        ).fetchall()
    return {name for (name,) in rows}


def test_the_views_come_and_go_with_their_migration(fresh_ledger: Settings) -> None:
    views = {
        "node_leaderboard",
        "node_disagreement",
        "node_reputation_history",
        "hw_class_summary",
        "unresolved_jobs",
        "replica_spend",
    }
    assert _views(fresh_ledger) == {"node_reputation_report", *views}

    migrate.downgrade(fresh_ledger, "0003")

    assert _views(fresh_ledger) == {"node_reputation_report"}
    done = cortensor(fresh_ledger, "report", "leaderboard")
    assert done.returncode == 4  # SetupIncomplete: an operator must migrate first
    assert "cortensor db upgrade" in done.stderr

    migrate.upgrade(fresh_ledger)

    assert _views(fresh_ledger) == {"node_reputation_report", *views}
    assert run_report(fresh_ledger, "replicas") == []
