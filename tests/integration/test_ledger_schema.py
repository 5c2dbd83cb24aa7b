"""The ledger's migrations, models, view, score function and report, against PostgreSQL.

Every test gets a database of its own (`cortensor_t_<hex>`), dropped afterwards.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from cortensor.adapters.ledger import migrate
from cortensor.adapters.ledger.tables import (
    Assignment,
    Base,
    Job,
    Node,
    ReputationEvent,
    Result,
    Verdict,
)
from cortensor.errors import BadInput
from cortensor.protocol.reputation import Record, score
from cortensor.settings import Settings

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
REPORT = Path("db/reports/node_reputation.sql")
TABLES = {"nodes", "jobs", "assignments", "results", "verdicts", "reputation_events"}


def _settings_for(database: str) -> Settings:
    url = make_url(Settings().database_url).set(database=database)
    return Settings(database_url=url.render_as_string(hide_password=False))


def _drop_database(settings: Settings) -> None:
    url = make_url(settings.asyncpg_dsn)
    assert url.database, "refusing to drop a database without a name"
    maintenance = url.set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(url.database))
        )


def _database_exists(settings: Settings) -> bool:
    url = make_url(settings.asyncpg_dsn)
    maintenance = url.set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(maintenance) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
        return row.fetchone() is not None


def _head(settings: Settings) -> str | None:
    return ScriptDirectory.from_config(migrate.alembic_config(settings)).get_current_head()


@pytest.fixture
def fresh_settings() -> Iterator[Settings]:
    """Settings naming a database that does not exist yet; dropped after the test."""
    settings = _settings_for(f"cortensor_t_{uuid.uuid4().hex[:10]}")
    try:
        yield settings
    finally:
        _drop_database(settings)


@pytest.fixture
def ledger(fresh_settings: Settings) -> Settings:
    """Settings of a freshly created and migrated ledger."""
    migrate.upgrade(fresh_settings)
    return fresh_settings


@pytest.fixture
def engine(ledger: Settings) -> Iterator[Engine]:
    """An engine on the migrated test ledger."""
    eng = create_engine(ledger.sqlalchemy_url, poolclass=NullPool)
    try:
        yield eng
    finally:
        eng.dispose()


def _ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def _job(**fields: Any) -> Job:
    return Job(
        job_id=uuid.uuid4(),
        task="embed",
        model="all-minilm-l6-v2",
        redundancy=2,
        hw_class="any",
        inputs={"texts": ["hello"]},
        status="running",
        deadline_at=_ago(seconds=-60),
        **fields,
    )


def _seed(engine: Engine) -> None:
    """Four nodes: a (2 agreed, 1 timed out), b (2 disagreed), c (1 timed out, no
    heartbeat for a minute), d (nothing at all)."""
    j1, j2, j3 = _job(), _job(), _job()
    nodes = [
        Node(node_id="node-a", hw_class="cpu-int8", precision="int8", models=["m"]),
        Node(node_id="node-b", hw_class="cpu-fp32", precision="fp32", status="draining"),
        Node(node_id="node-c", hw_class="cpu-int8", precision="int8", last_seen=_ago(minutes=1)),
        Node(node_id="node-d", hw_class="gpu-fp16", precision="fp16"),
    ]
    plan = [
        ("node-a", j1, "agreed"),
        ("node-a", j2, "agreed"),
        ("node-a", j3, "timed_out"),
        ("node-b", j1, "disagreed"),
        ("node-b", j2, "disagreed"),
        ("node-c", j3, "timed_out"),
    ]
    assignments, results, events = [], [], []
    for node_id, job, kind in plan:
        assignment = Assignment(
            assignment_id=uuid.uuid4(),
            job_id=job.job_id,
            node_id=node_id,
            hw_class="cpu-int8",
            status="timed_out" if kind == "timed_out" else "done",
            deadline_at=_ago(seconds=-10),
        )
        assignments.append(assignment)
        if kind != "timed_out":
            results.append(
                Result(
                    assignment_id=assignment.assignment_id,
                    job_id=job.job_id,
                    node_id=node_id,
                    precision="int8",
                    output={"vector": [0.1, 0.2]},
                    elapsed_ms=12.5,
                )
            )
        events.append(
            ReputationEvent(
                node_id=node_id,
                job_id=job.job_id,
                assignment_id=assignment.assignment_id,
                kind=kind,
            )
        )
    verdict = Verdict(job_id=j1.job_id, status="inconclusive", replicas=2, payload={"v": 1})
    with Session(engine) as session, session.begin():
        session.add_all([*nodes, j1, j2, j3])
        session.flush()
        session.add_all(assignments)
        session.flush()
        session.add_all([*results, *events, verdict])


def _report(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM node_reputation_report")).mappings().all()
    return {row["node_id"]: dict(row) for row in rows}


def test_upgrade_creates_the_database_and_is_idempotent(fresh_settings: Settings) -> None:
    assert not _database_exists(fresh_settings)
    assert migrate.current(fresh_settings) is None

    migrate.upgrade(fresh_settings)

    assert _database_exists(fresh_settings)
    head = _head(fresh_settings)
    assert head is not None
    assert migrate.current(fresh_settings) == head
    eng = create_engine(fresh_settings.sqlalchemy_url, poolclass=NullPool)
    try:
        assert set(inspect(eng).get_table_names()) >= TABLES
        with eng.begin() as conn:
            conn.execute(
                text("INSERT INTO nodes (node_id, hw_class, precision) VALUES ('n', 'x', 'y')")
            )

        assert migrate.ensure_database(fresh_settings) is False
        migrate.upgrade(fresh_settings)

        assert migrate.current(fresh_settings) == head
        with eng.connect() as conn:
            assert conn.execute(text("SELECT node_id FROM nodes")).scalars().all() == ["n"]
    finally:
        eng.dispose()


def test_concurrent_upgrades_take_turns(fresh_settings: Settings) -> None:
    code = (
        "from cortensor.settings import Settings\n"
        "from cortensor.adapters.ledger.migrate import upgrade\n"
        "upgrade(Settings())\n"
    )
    env = {**os.environ, "CORTENSOR_DATABASE_URL": fresh_settings.database_url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outcomes = [(proc.wait(timeout=60), proc.communicate(timeout=60)[1].decode()) for proc in procs]

    assert all(rc == 0 for rc, _ in outcomes), outcomes
    assert migrate.current(fresh_settings) == _head(fresh_settings)


def test_report_view_counts_and_scores(engine: Engine) -> None:
    _seed(engine)

    report = _report(engine)

    expected = {
        "node-a": ("cpu-int8", "live", 3, Record(agreed=2, timed_out=1)),
        "node-b": ("cpu-fp32", "draining", 2, Record(disagreed=2)),
        "node-c": ("cpu-int8", "offline", 1, Record(timed_out=1)),
        "node-d": ("gpu-fp16", "live", 0, Record()),
    }
    assert set(report) == set(expected)
    for node_id, (hw_class, status, jobs, record) in expected.items():
        row = report[node_id]
        assert row["hw_class"] == hw_class
        assert row["status"] == status
        assert row["jobs"] == jobs
        assert (row["agreed"], row["disagreed"], row["timed_out"]) == (
            record.agreed,
            record.disagreed,
            record.timed_out,
        )
        assert row["score"] == round(score(record), 4)
        assert row["last_seen"] is not None
    assert report["node-a"]["score"] == 0.6
    assert report["node-b"]["score"] == 0.25


def test_node_without_events_scores_half(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO nodes (node_id, hw_class, precision) VALUES ('new', 'x', 'y')")
        )

    row = _report(engine)["new"]

    assert row["score"] == 0.5
    assert (row["jobs"], row["agreed"], row["disagreed"], row["timed_out"]) == (0, 0, 0, 0)
    assert row["status"] == "live"


def test_report_view_column_types(engine: Engine) -> None:
    with engine.connect() as conn:
        types: dict[str, str] = dict(
            conn.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_name = 'node_reputation_report'"
                )
            ).all()
        )
    assert types == {
        "node_id": "text",
        "hw_class": "text",
        "status": "text",
        "score": "double precision",
        "jobs": "bigint",
        "agreed": "bigint",
        "disagreed": "bigint",
        "timed_out": "bigint",
        "last_seen": "timestamp with time zone",
    }


def test_sql_score_is_the_python_score_bit_for_bit(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT a, d, t, cortensor_score(a, d, t)"
                " FROM generate_series(0, 12) a, generate_series(0, 12) d,"
                " (VALUES (0), (1), (7), (1000003)) AS x(t)"
            )
        ).all()
    assert len(rows) == 13 * 13 * 4
    for a, d, t, sql_score in rows:
        assert sql_score == score(Record(agreed=a, disagreed=d, timed_out=t)), (a, d, t)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE reputation_events SET kind = 'agreed'",
        "DELETE FROM reputation_events",
        "DELETE FROM reputation_events WHERE node_id = 'node-b'",
    ],
)
def test_reputation_events_are_append_only(engine: Engine, statement: str) -> None:
    _seed(engine)

    with (
        pytest.raises(DBAPIError, match="reputation_events is append-only"),
        engine.begin() as conn,
    ):
        conn.execute(text(statement))

    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM reputation_events")).scalar_one() == 6
    assert _report(engine)["node-b"]["disagreed"] == 2


def test_one_assignment_per_job_and_node(engine: Engine) -> None:
    job = _job()
    job_id = job.job_id
    with Session(engine) as session, session.begin():
        session.add_all([Node(node_id="n", hw_class="cpu-int8", precision="int8"), job])
        session.flush()
        session.add(Assignment(job_id=job_id, node_id="n", hw_class="cpu-int8", deadline_at=_ago()))

    with pytest.raises(IntegrityError, match="uq_assignments_job_id_node_id"):  # noqa: SIM117
        with Session(engine) as session, session.begin():
            session.add(
                Assignment(
                    job_id=job_id,
                    node_id="n",
                    hw_class="cpu-int8",
                    attempt=2,
                    deadline_at=_ago(),
                )
            )


def test_report_sql_runs_in_psql(ledger: Settings, engine: Engine) -> None:
    _seed(engine)
    psql = shutil.which("psql")
    assert psql, "psql is not on PATH (apt-get install -y postgresql-client)"

    done = subprocess.run(
        [psql, "-X", "-v", "ON_ERROR_STOP=1", "-d", ledger.asyncpg_dsn, "-f", str(REPORT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    order = [done.stdout.index(node_id) for node_id in ("node-a", "node-d", "node-c", "node-b")]
    assert order == sorted(order), done.stdout


def test_downgrade_to_base_then_upgrade_again(ledger: Settings, engine: Engine) -> None:
    _seed(engine)

    migrate.downgrade(ledger, "base")

    assert migrate.current(ledger) is None
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == {"alembic_version"}
        assert inspect(conn).get_view_names() == []
        functions = conn.execute(
            text("SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace")
        ).all()
        assert functions == []

    migrate.upgrade(ledger)

    assert migrate.current(ledger) == _head(ledger)
    _seed(engine)
    assert _report(engine)["node-a"]["score"] == 0.6


def test_models_match_the_migrated_schema(engine: Engine) -> None:
    def include(
        obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
    ) -> bool:
        return not (type_ == "table" and name == "node_reputation_report")

    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"compare_type": True, "compare_server_default": True, "include_object": include},
        )
        diff = compare_metadata(context, Base.metadata)

    assert diff == []


def _catalog(eng: Engine) -> dict[str, set[tuple[str, ...]]]:
    """What autogenerate does not compare: constraint bodies, index predicates, defaults."""
    queries = {
        "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
        " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
        " AND conrelid::regclass::text <> 'alembic_version'",
        "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = 'public' AND tablename <> 'alembic_version'",
        "columns": "SELECT table_name, column_name, data_type, is_nullable,"
        " coalesce(column_default, '') FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name IN"
        " ('nodes', 'jobs', 'assignments', 'results', 'verdicts', 'reputation_events')",
    }
    with eng.connect() as conn:
        return {
            key: {tuple(row) for row in conn.execute(text(q)).all()} for key, q in queries.items()
        }


def test_models_create_the_same_constraints_and_indexes(engine: Engine) -> None:
    twin = _settings_for(f"cortensor_t_{uuid.uuid4().hex[:10]}")
    migrate.ensure_database(twin)
    twin_engine = create_engine(twin.sqlalchemy_url, poolclass=NullPool)
    try:
        Base.metadata.create_all(twin_engine)
        from_models = _catalog(twin_engine)
    finally:
        twin_engine.dispose()
        _drop_database(twin)

    migrated = _catalog(engine)

    # 10 primary keys, 12 checks (3 sha256 lengths, the Ed25519 key's length, an
    # outage's server and order), 11 foreign keys (a part names its parent job), 3 unique.
    assert len(migrated["constraints"]) == 36
    assert migrated == from_models


def test_offline_mode_emits_the_whole_schema_as_sql() -> None:
    config = migrate.alembic_config(_settings_for("cortensor_t_never_created"))
    config.output_buffer = io.StringIO()

    command.upgrade(config, "head", sql=True)

    emitted = config.output_buffer.getvalue()
    for table in TABLES:
        assert f"CREATE TABLE {table} " in emitted
    assert "CREATE TRIGGER reputation_events_append_only" in emitted
    assert "CREATE VIEW node_reputation_report" in emitted
    assert "pg_advisory_xact_lock" not in emitted


def test_database_url_without_a_database_is_bad_input() -> None:
    with pytest.raises(BadInput, match="names no database"):
        migrate.ensure_database(Settings(database_url="postgresql://127.0.0.1:5432"))
