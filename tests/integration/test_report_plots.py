"""`cortensor report NAME --plot PNG`: the drawable reports draw, on test_reports' seeded
ledger; a report that cannot be drawn is refused before the ledger is asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortensor.errors import BadInput
from cortensor.settings import Settings
from cortensor.tools.plots import CHARTS, plot_report
from cortensor.tools.reports import run_report
from tests.integration.test_reports import cortensor, seeded

pytestmark = pytest.mark.postgres

__all__ = ["seeded"]  # the fixture, shared with test_reports

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_every_drawable_report_draws_a_png(seeded: Settings, name: str, tmp_path: Path) -> None:
    rows = run_report(seeded, name, {"node": "n-c"} if name == "node_history" else {})
    assert rows
    path = tmp_path / f"{name}.png"
    plot_report(name, rows, path)
    assert path.read_bytes()[:8] == PNG


def test_no_rows_draw_empty_axes(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    plot_report("replicas", [], path)
    assert path.read_bytes()[:8] == PNG


def test_the_command_draws_the_leaderboard_and_still_prints_it(
    seeded: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "leaderboard.png"
    done = cortensor(seeded, "report", "leaderboard", "--plot", str(path))

    assert done.returncode == 0, done.stderr
    assert path.read_bytes()[:8] == PNG
    assert f"leaderboard drawn in {path}" in done.stderr
    assert "n-a" in done.stdout


def test_a_report_that_cannot_be_drawn_says_which_can(seeded: Settings, tmp_path: Path) -> None:
    path = tmp_path / "unresolved.png"
    done = cortensor(seeded, "report", "unresolved", "--plot", str(path))

    assert done.returncode == 2
    assert "report unresolved cannot be drawn" in done.stderr
    assert "leaderboard" in done.stderr
    assert not path.exists()
    with pytest.raises(BadInput, match="cannot be drawn"):
        plot_report("unresolved", [{"status": "failed", "reason": "x", "jobs": 1}], path)
