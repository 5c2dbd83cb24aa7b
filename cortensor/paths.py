"""Files the package reads besides its code: the broker topology, the ledger's migrations
and reports (shipped inside the package), and the Procfile (a checkout's alone).

brokers/ and db/ live at the top of the project. A wheel carries a copy of the shipped
ones under cortensor/_data/ with the same relative paths (setup.py copies them at build
time); an editable install reads them from the checkout. `resource` looks in that order.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from cortensor.errors import SetupIncomplete

ROOT = Path(__file__).resolve().parents[1]
"""The checkout when the package runs from one (an editable install)."""

SHIPPED = ("brokers", "db/migrations", "db/reports")
"""The project's folders that every installation carries (see setup.py)."""


def bundled_root() -> Path:
    """Where an installed package keeps its copy of the shipped folders."""
    # A wheel installs as plain files, so the package's resources are a real folder:
    # Alembic needs a path on disk, not a reader.
    return Path(str(files("cortensor"))) / "_data"


def resource(*parts: str) -> Path:
    """A file or folder of the shipped ones (e.g. `resource("db", "migrations")`): the
    installed copy, else the checkout's; a clear error when neither has it."""
    for base in (bundled_root(), ROOT):
        path = base.joinpath(*parts)
        if path.exists():
            return path
    raise SetupIncomplete(
        f"{'/'.join(parts)} is missing from the installed package ({bundled_root()}) and"
        f" there is no checkout at {ROOT}; reinstall Cortensor from a wheel or the source"
    )


def checkout_path(*parts: str) -> Path:
    """A path inside the checkout, for what only a checkout has (the Procfile, docs/);
    a clear error when the package runs without one."""
    path = ROOT.joinpath(*parts)
    if not path.exists():
        raise SetupIncomplete(
            f"{path} is missing: it is part of Cortensor's source checkout, not of the"
            " installed package; run this from a checkout (`pip install -e .` there)"
        )
    return path
