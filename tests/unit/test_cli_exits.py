"""Every way a user can get a command wrong, and what it exits with (cortensor.errors.EXIT_CODE).

These paths end before any server answers: the input is refused first, or the server
named is one that cannot be there (port 1 on loopback). Paths that need a live server
are in tests/integration/test_cli.py.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cortensor.cli import app

NOWHERE = {
    # No credentials file: the session's (the admin's) would win over these URLs.
    "CORTENSOR_CREDENTIALS": "",
    "CORTENSOR_DATABASE_URL": "postgresql://127.0.0.1:1/cortensor",
    "CORTENSOR_AMQP_URL": "amqp://guest:secret@127.0.0.1:1/",
}


@pytest.fixture(autouse=True)
def _no_global_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that configure logging would point structlog at the runner's stderr,
    which is closed once the command returns, for every later test in the process."""
    import cortensor.cli

    monkeypatch.setattr(cortensor.cli, "_configure_logging", lambda: None)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    done = CliRunner().invoke(app, list(args), env={**NOWHERE, **(env or {})})
    return done.exit_code, " ".join((done.stderr + done.stdout).split())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["submit", "embed", " "], "error: invalid job: inputs: inputs [0] are blank"),
        (["submit", "embed", "hi", "--redundancy", "9"], "redundancy"),
        (["submit", "embed", "hi", "--hw-class", "tpu"], "hw_class"),
        (["submit", "embed", "hi", "--deadline", "0"], "deadline_s"),
        (["submit", "classify", "hi", "--top-k", "0"], "top_k"),
        (["submit", "transcribe", "/no/such/file.wav"], "cannot read /no/such/file.wav"),
        (["submit", "transcribe", __file__, "--model", "whisper-huge"], "unknown model"),
        (["result", "not-a-uuid"], "'not-a-uuid' is not a job id"),
        (["node", "--node-id", "has.dots"], "--node-id takes letters"),
        (["node", "--fault", "colluding"], "--fault colluding needs --fault-group"),
        (["node", "--fault-rate", "2", "--fault", "slow"], "between 0 and 1"),
        (["report", "no-such-report"], "no report 'no-such-report'"),
        (["report", "node_history"], "report node_history needs --node"),
        (["report", "leaderboard", "--node", "n1"], "report leaderboard takes no --node"),
        (["simulate", "--mix", "bogus=1"], "unknown fault mode 'bogus'"),
        (["simulate", "--mix", "random"], "write MODE=SHARE"),
    ],
)
def test_bad_input_exits_2_and_says_what_to_change(args: list[str], says: str) -> None:
    code, output = run(*args)
    assert code == 2, output
    assert says in output
    assert "Traceback" not in output


def test_a_bad_setting_exits_2_and_names_it() -> None:
    code, output = run("report", "nodes", env={"CORTENSOR_NAMESPACE": "Not A Namespace"})
    assert code == 2
    assert "bad CORTENSOR_* setting: namespace" in output


def test_a_database_url_without_a_database_exits_2() -> None:
    code, output = run("db", "upgrade", env={"CORTENSOR_DATABASE_URL": "postgresql://127.0.0.1:1"})
    assert code == 2
    assert "CORTENSOR_DATABASE_URL names no database" in output


def test_a_usage_error_exits_2_like_every_bad_input() -> None:
    code, output = run("report", "--no-such-option")
    assert code == 2
    assert "No such option" in output


def test_an_unreachable_ledger_exits_3_try_again_later() -> None:
    code, output = run("report", "leaderboard")
    assert code == 3, output
    assert "cannot reach PostgreSQL at 127.0.0.1:1/cortensor" in output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["submit", "embed", "hi"], "RabbitMQ at 127.0.0.1:1/: check CORTENSOR_AMQP_URL"),
        (["submit", "embed", "hi", "--wait"], "RabbitMQ at 127.0.0.1:1/: check CORTENSOR_AMQP"),
        (["result", str(uuid.uuid4())], "RabbitMQ at 127.0.0.1:1/: check CORTENSOR_AMQP_URL"),
        (["brokers", "setup"], "RabbitMQ at 127.0.0.1:1/: check CORTENSOR_AMQP_URL"),
        (["report", "nodes"], "PostgreSQL at 127.0.0.1:1/cortensor: check CORTENSOR_DATABASE"),
        (["reputation", "check"], "PostgreSQL at 127.0.0.1:1/cortensor: check CORTENSOR_DATA"),
        (["db", "upgrade"], "PostgreSQL at 127.0.0.1:1/cortensor: check CORTENSOR_DATABASE"),
    ],
)
def test_a_server_that_cannot_be_reached_is_named_in_one_line(args: list[str], says: str) -> None:
    done = CliRunner().invoke(app, args, env={**NOWHERE, "CORTENSOR_CONNECT_TIMEOUT_S": "1"})
    lines = (done.stderr + done.stdout).strip().splitlines()
    assert done.exit_code == 3, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: cannot reach "), lines
    assert says in lines[0]
    assert lines[0].endswith("or your credentials file")
    assert "secret" not in lines[0]


def test_an_unreachable_rabbitmq_exits_3_and_hides_the_password() -> None:
    code, output = run("brokers", "setup")
    assert code == 3, output
    assert "cannot reach RabbitMQ at 127.0.0.1:1/" in output
    assert "secret" not in output


def test_unreachable_postgres_for_migrations_exits_3() -> None:
    code, output = run("db", "upgrade")
    assert code == 3, output
    assert "cannot reach PostgreSQL" in output


def test_missing_preparation_tools_exit_4_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cortensor.tools.prepare", None)
    code, output = run("models", "prepare")
    assert code == 4, output
    assert "install the `prepare` extra" in output


def test_a_bug_exits_70_with_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import cortensor.tools.reports as reports

    def broken(name: str) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(reports, "find_report", broken)
    code, output = run("report", "leaderboard")
    assert code == 70
    assert "Traceback" in output
    assert "error: 'a bug'" in output


def test_stale_schemas_are_a_negative_answer_not_an_error(tmp_path: Path) -> None:
    code, output = run("schemas", "write", "--check", "--directory", str(tmp_path))
    assert code == 1
    assert "stale schemas" in output


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("amqp://guest:secret@127.0.0.1:5672/", "127.0.0.1:5672/"),
        ("amqps://u:p@h1:5671/,amqps://u:p@h2:5671/", "h1:5671/, h2:5671/"),
        ("nats://u:p@[::1]:4222", "[::1]:4222"),
        ("postgresql://u:secret@db:bad/cortensor", "db/cortensor"),
    ],
)
def test_a_server_is_named_by_its_address_without_its_login(url: str, said: str) -> None:
    from cortensor.adapters.reach import address

    assert address(url) == said
