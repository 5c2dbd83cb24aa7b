"""A fleet is ready when its own nodes are up and admitted, whatever other nodes a
shared ledger holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortensor.tools.fleet import Fleet, FleetError
from tests.conftest import make_settings


def fleet(tmp_path: Path, live: list[str], active: list[str]) -> Fleet:
    f = Fleet(make_settings(), nodes=2, log_dir=tmp_path)
    f._issued = [("router", "router"), ("node", "node-1"), ("node", "node-2")]
    f.live_nodes = lambda: live  # type: ignore[method-assign]
    f.active_nodes = lambda: active  # type: ignore[method-assign]
    return f


def test_nodes_of_another_fleet_admitted_in_the_same_ledger_do_not_make_it_ready(
    tmp_path: Path,
) -> None:
    others = ["seed-1", "seed-2", "seed-3"]
    f = fleet(tmp_path, live=["node-1", "node-2", *others], active=others)
    with pytest.raises(FleetError, match="0 of 2 admitted"):
        f.wait_ready(timeout_s=0.2)


def test_a_fleet_whose_own_nodes_are_admitted_is_ready(tmp_path: Path) -> None:
    f = fleet(tmp_path, live=["node-1", "node-2", "seed-1"], active=["node-1", "node-2"])
    assert f.wait_ready(timeout_s=5.0) == ["node-1", "node-2"]


def test_a_fleet_waits_for_its_nodes_to_finish_what_they_hold(tmp_path: Path) -> None:
    f = fleet(tmp_path, live=[], active=[])
    counts = iter([3, 1, 0])
    f.holding = lambda: next(counts)  # type: ignore[method-assign]
    assert f.wait_idle(timeout_s=5.0, poll_s=0.01) == 0


def test_a_fleet_stops_waiting_for_its_nodes_after_the_timeout(tmp_path: Path) -> None:
    f = fleet(tmp_path, live=[], active=[])
    f.holding = lambda: 2  # type: ignore[method-assign]
    assert f.wait_idle(timeout_s=0.05, poll_s=0.01) == 2
