"""The models manifest: which prepared variants exist, where their files are, their sha256.

A node reads this at run time, so it must not import torch, Optimum or transformers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cortensor.catalog import Precision, Task
from cortensor.errors import ModelsNotPrepared

MANIFEST_NAME = "manifest.json"
_PREPARE_HINT = "run `cortensor models prepare`"
_CHUNK = 1 << 20


def _relative(value: str) -> str:
    # Paths come from a file on disk: refuse any that could point outside the models dir.
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"must be a relative path inside the models directory, got {value!r}")
    return value


class ModelFile(BaseModel):
    """One file of a prepared variant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    """Relative to the models directory, '/'-separated."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)

    _check_path = field_validator("path")(_relative)


class ModelVariant(BaseModel):
    """One prepared variant of a model, e.g. all-MiniLM-L6-v2 int8."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    task: Task
    variant: str
    precision: Precision
    hw_classes: list[str]
    quantization: str = ""
    """Empty for an unquantized export, else how it was quantized."""
    directory: str
    onnx_file: str
    files: list[ModelFile]

    _check_paths = field_validator("directory", "onnx_file")(_relative)


class Manifest(BaseModel):
    """Every prepared variant in a models directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    variants: list[ModelVariant] = Field(default_factory=list)

    def models_for(self, hw_class: str) -> list[ModelVariant]:
        """The variants that a node of `hw_class` may serve."""
        return [v for v in self.variants if hw_class in v.hw_classes]

    def variant_for(self, name: str, hw_class: str) -> ModelVariant:
        """The variant of model `name` for `hw_class`.

        Raises ModelsNotPrepared when no prepared variant serves that class.
        """
        for variant in self.models_for(hw_class):
            if variant.name == name:
                return variant
        raise ModelsNotPrepared(
            f"No prepared variant of {name!r} serves hardware class {hw_class!r}; {_PREPARE_HINT}."
        )


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(models_dir: Path) -> Manifest:
    """Read `models_dir`/manifest.json.

    Raises ModelsNotPrepared when it is missing or cannot be parsed.
    """
    path = models_dir / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelsNotPrepared(f"No models manifest at {path}; {_PREPARE_HINT}.") from None
    except OSError as exc:
        raise ModelsNotPrepared(f"Cannot read {path} ({exc}); {_PREPARE_HINT}.") from exc
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        raise ModelsNotPrepared(
            f"The models manifest {path} is invalid ({exc.error_count()} errors); "
            f"{_PREPARE_HINT} again."
        ) from exc


def verify_variant(models_dir: Path, variant: ModelVariant) -> list[str]:
    """The problems with a variant's files on disk; an empty list means it is intact."""
    problems: list[str] = []
    if variant.onnx_file not in {f.path for f in variant.files}:
        problems.append(f"{variant.onnx_file}: not listed among the variant's files")
    for entry in variant.files:
        path = models_dir / entry.path
        if not path.is_file():
            problems.append(f"{entry.path}: missing")
        elif path.stat().st_size != entry.bytes:
            # A size check is free; hashing 90 MB is not.
            problems.append(f"{entry.path}: {path.stat().st_size} bytes, expected {entry.bytes}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs from the manifest")
    return problems
