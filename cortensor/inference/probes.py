"""Reading the prepared probe set that `cortensor models prepare` writes."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from cortensor.errors import ModelsNotPrepared
from cortensor.protocol.probing import ProbeSet

PROBES_NAME = "probes.json"


def load_probes(models_dir: Path) -> ProbeSet:
    """The prepared probe set; ModelsNotPrepared when it is missing or unreadable."""
    path = models_dir / PROBES_NAME
    try:
        return ProbeSet.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise ModelsNotPrepared(
            f"no usable probe set at {path} ({type(exc).__name__}); run `cortensor models prepare`"
        ) from exc
