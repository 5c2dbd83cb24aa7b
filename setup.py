"""The one build step pyproject.toml cannot declare: a wheel carries the broker
configuration and the ledger's migrations and reports.

brokers/, db/migrations/ and db/reports/ stay where the project keeps them; building
copies them under cortensor/_data/ with the same relative paths, where
cortensor.paths.resource finds them in an installed package. An editable install
reads them from the checkout instead, so it needs no copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED: dict[str, tuple[str, ...]] = {
    "brokers": ("*.toml", "*.conf"),
    "db/migrations": ("env.py", "script.py.mako", "versions/*.py"),
    "db/reports": ("*.sql",),
}
"""Folder of the checkout -> the files of it that ship (as glob patterns)."""


class BuildWithData(build_py):
    """build_py, then the bundled folders copied into the build's cortensor/_data/."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "cortensor" / "_data"
        for folder, patterns in BUNDLED.items():
            source = ROOT / folder
            found = [path for pattern in patterns for path in sorted(source.glob(pattern))]
            if not found:
                raise FileNotFoundError(f"{source} holds none of {patterns}; nothing to bundle")
            for path in found:
                copy = target / folder / path.relative_to(source)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, copy)


setup(cmdclass={"build_py": BuildWithData})
