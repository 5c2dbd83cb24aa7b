"""Files of the source checkout that the package reads: broker topology, migrations,
reports, the Procfile. Cortensor runs from its checkout (`pip install -e .`)."""

from __future__ import annotations

from pathlib import Path

from cortensor.errors import PermanentError

ROOT = Path(__file__).resolve().parents[1]


def checkout_path(*parts: str) -> Path:
    """A path inside the checkout; a clear error when the package runs without one."""
    path = ROOT.joinpath(*parts)
    if not path.exists():
        raise PermanentError(
            f"{path} is missing: Cortensor reads its broker topology, migrations and"
            " reports from its source checkout; install it with `pip install -e .` there"
        )
    return path
