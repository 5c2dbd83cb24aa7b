"""The chaos suite's network, started once for the package: private servers that the
scenarios stop and kill, and a fleet whose processes they kill (tests/chaos/harness.py).

Scenarios marked `chaos_full` run only when asked for: `ops/chaos` (which sets
CORTENSOR_CHAOS=full) or a `-m` expression that names the marker. The rest is the
subset that runs with every test run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import Network, private_network


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the `chaos_full` scenarios unless the run asks for them."""
    if os.environ.get("CORTENSOR_CHAOS") == "full" or "chaos_full" in (
        config.getoption("markexpr", "") or ""
    ):
        return
    kept = [item for item in items if item.get_closest_marker("chaos_full") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


@pytest.fixture(scope="package")
def network(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """Private servers and a three-node fleet on them, for every scenario."""
    with private_network(tmp_path_factory.mktemp("chaos"), models_dir, nodes=3) as net:
        yield net


@pytest.fixture
def net(network: Network) -> Network:
    """The network as each scenario starts from it: every server up, every process
    running, every node admitted (whatever the scenario before left)."""
    network.ensure()
    return network
