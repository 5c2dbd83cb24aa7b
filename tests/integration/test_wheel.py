"""The package runs outside its checkout: a wheel built from the working tree, installed
into a fresh virtualenv, migrates a ledger, declares the broker topology and runs a
report from a directory that has nothing of the checkout in it.

The fresh virtualenv reuses this one's installed dependencies (a .pth line naming its
site-packages, as `--system-site-packages` would for a system Python) so that the test
stays offline and fast; Cortensor itself comes from the wheel alone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from cortensor.adapters.ledger import migrate
from cortensor.adapters.provision import teardown_brokers
from cortensor.paths import ROOT, SHIPPED
from cortensor.settings import Settings
from tests.conftest import make_settings

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.nats]


def _source_files() -> list[str]:
    """The working tree as git sees it: tracked files and untracked ones not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the working tree (no build/ left in the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in _source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "-w",
            str(dist),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    [built] = dist.glob("cortensor-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed; its bin/ directory."""
    home = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=120)
    bin_dir = home / "bin"
    site = subprocess.run(
        [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Dependencies from this environment, after the fresh one's own site-packages; a
    # .pth line adds a path but runs none of the .pth files there (no editable finder).
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--force-reinstall",
            str(wheel),
        ],
        check=True,
        timeout=300,
        env=_clean_env(),
    )
    return bin_dir


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return {**env, **extra}


@pytest.fixture
def throwaway() -> Iterator[Settings]:
    settings = make_settings()
    yield settings
    asyncio.run(teardown_brokers(settings))
    migrate.drop_database(settings)


def test_the_wheel_carries_the_broker_configuration_migrations_and_reports(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in SHIPPED:
        in_checkout = {
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".md"
        }
        assert in_checkout, folder
        assert {f"cortensor/_data/{name}" for name in in_checkout} <= names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_an_installed_wheel_migrates_sets_up_and_reports_from_any_directory(
    venv: Path, throwaway: Settings, tmp_path: Path
) -> None:
    env = _clean_env(
        CORTENSOR_NAMESPACE=throwaway.namespace,
        CORTENSOR_DATABASE_URL=throwaway.database_url,
        CORTENSOR_AMQP_URL=throwaway.amqp_url,
        CORTENSOR_NATS_URL=throwaway.nats_url,
    )

    def cortensor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "cortensor"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    where = subprocess.run(
        [str(venv / "python"), "-c", "import cortensor.paths as p; print(p.resource('db'))"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(venv.parent)), "the package and its files come from the wheel"
    assert where.endswith("cortensor/_data/db")

    upgraded = cortensor("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    head = ScriptDirectory.from_config(migrate.alembic_config(throwaway)).get_current_head()
    assert migrate.current(throwaway) == head
    assert f"to {head}" in upgraded.stdout

    setup = cortensor("brokers", "setup")
    assert setup.returncode == 0, setup.stderr
    namespace = throwaway.namespace
    assert f"queue {namespace}.router <- {namespace}.submit[job.*]" in setup.stdout

    listed = cortensor("report")
    assert listed.returncode == 0, listed.stderr
    assert "leaderboard" in listed.stdout

    report = cortensor("report", "nodes", "--json")
    assert report.returncode == 0, report.stderr
    assert report.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == [], "nothing written to the working directory"
