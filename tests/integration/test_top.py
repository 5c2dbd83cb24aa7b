"""`cortensor top --once` against test_reports' seeded ledger: one frame, printed."""

from __future__ import annotations

import pytest

from cortensor.settings import Settings
from tests.integration.test_reports import cortensor, seeded
from tests.unit.test_top_render import cells

pytestmark = pytest.mark.postgres

__all__ = ["seeded"]  # the fixture, shared with test_reports


def test_once_prints_one_frame_of_the_ledgers_nodes(seeded: Settings) -> None:
    # The seed's nodes were last seen on 2026-01-01: --seen reaches back to them.
    done = cortensor(seeded, "top", "--once", "--seen", "1e9", "--window", "5")

    assert done.returncode == 0, done.stderr
    rows = [cells(line) for line in done.stdout.splitlines()]
    for node in ("n-a", "n-b", "n-c", "n-d", "n-e"):
        assert any(row[:1] == [node] for row in rows), done.stdout
    [n_c] = [row for row in rows if row[:1] == ["n-c"]]
    assert n_c[1:3] == ["cpu-fp32", "quarantined"]
    assert "Queue depth per hardware class" in done.stdout
    assert "Jobs decided per second" in done.stdout
    assert "rates over 5 s" in done.stdout


def test_nodes_not_seen_lately_are_left_out(seeded: Settings) -> None:
    done = cortensor(seeded, "top", "--once")

    assert done.returncode == 0, done.stderr
    assert "Nodes (0)" in done.stdout
