"""Where the prepared probes are written: beside the models directory, never inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortensor.errors import ModelsNotPrepared
from cortensor.inference.manifest import Manifest
from cortensor.inference.probes import PROBES_NAME, default_probes_path, load_probes
from cortensor.protocol.probing import Probe, ProbeSet
from cortensor.settings import Settings
from cortensor.tools.probe_prep import _source, prepare_probes

EMPTY = Manifest(variants=[])


def current_set() -> ProbeSet:
    probe = Probe(task="embed", model="m", inputs=["a"], reference=[[1.0]])
    return ProbeSet(source=_source(EMPTY), probes=[probe])


def test_a_probe_set_left_inside_the_models_directory_is_moved_out(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / PROBES_NAME).write_text(current_set().model_dump_json(), encoding="utf-8")
    log: list[str] = []

    prepared = prepare_probes(models, EMPTY, log=log.append)

    assert prepared == current_set()
    assert not (models / PROBES_NAME).exists()
    assert load_probes(default_probes_path(models)) == current_set()
    assert default_probes_path(models) == tmp_path / PROBES_NAME
    assert log == ["probes: up to date"]


def test_the_settings_and_the_preparation_agree_on_the_default_place(tmp_path: Path) -> None:
    models = tmp_path / "models"
    assert Settings(models_dir=models).probes_path == default_probes_path(models)
    elsewhere = tmp_path / "router" / "probes.json"
    assert Settings(models_dir=models, probes_file=elsewhere).probes_path == elsewhere


def test_probes_are_never_written_where_nodes_read(tmp_path: Path) -> None:
    with pytest.raises(ModelsNotPrepared, match="every node reads"):
        prepare_probes(tmp_path, EMPTY, target=tmp_path / "mine.json", log=print)
