"""Reading the prepared probe set that `cortensor models prepare` writes.

The file lives beside the models directory, never inside it (Settings.probes_path):
nodes read the models directory, and a node that could read the probes would answer
exactly those honestly. Only routers read it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from cortensor.errors import ModelsNotPrepared
from cortensor.protocol.probing import ProbeSet

PROBES_NAME = "probes.json"


def default_probes_path(models_dir: Path) -> Path:
    """Where the prepared probes go unless configured: beside the models directory."""
    return models_dir.with_name(PROBES_NAME)


def load_probes(path: Path) -> ProbeSet:
    """The prepared probe set at `path`; ModelsNotPrepared when it is missing or unreadable."""
    try:
        return ProbeSet.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise ModelsNotPrepared(
            f"no usable probe set at {path} ({type(exc).__name__}); run `cortensor models prepare`"
        ) from exc
