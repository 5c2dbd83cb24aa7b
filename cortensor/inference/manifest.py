"""The models manifest: which prepared variants exist, where their files are, their sha256.

A node reads this at run time, so it must not import torch, Optimum or transformers.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cortensor.catalog import TASK_OF, Precision, Task
from cortensor.errors import ModelsNotPrepared
from cortensor.inference.hardware import Int8Isa, cpu_flags, int8_isa

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION: Literal[2] = 2
_PREPARE_HINT = "run `cortensor models prepare`"
_CHUNK = 1 << 20

ModelFormat = Literal["onnx", "ctranslate2", "linear-head", "onnx-causal-lm"]
"""onnx: an encoder whose token outputs are pooled; onnx-causal-lm: a decoder with a KV
cache (past_key_values.* in, present.* out), its tokenizer and chat template beside it."""
VariantIsa = Literal["", "avx512_vnni", "avx2"]

_SUPPORTED_ISAS: dict[Int8Isa, tuple[VariantIsa, ...]] = {
    # Best first: a VNNI CPU runs avx2-quantized graphs too, only slower.
    "avx512_vnni": ("avx512_vnni", "avx2", ""),
    "avx2": ("avx2", ""),
    "other": ("",),
}

FileChecks = MutableMapping["ModelFile", str]
"""Results of checking files already, shared between calls of verify_variant in one run:
each checked file maps to its problem, or to '' when it is intact."""


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
    """One prepared variant of a model, e.g. all-MiniLM-L6-v2 int8 or whisper-base fp16."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    task: Task
    variant: str
    format: ModelFormat
    precision: Precision
    hw_classes: list[str]
    quantization: str = ""
    """Empty for an unquantized export, else how it was quantized or converted."""
    isa: VariantIsa = ""
    """The CPU instruction set an int8 ONNX graph was quantized for; empty means any CPU."""
    compute_type: str = ""
    """The CTranslate2 compute type a ctranslate2 variant loads with (int8, float16, ...)."""
    base_model: str = ""
    """For a head over another model's outputs (the intent classifier): that model."""
    directory: str
    entry: str
    """The main file: the .onnx graph, CTranslate2's model.bin, or the head's .npz."""
    files: list[ModelFile]

    _check_paths = field_validator("directory", "entry")(_relative)


def isa_supported(variant_isa: str, cpu_isa: Int8Isa) -> bool:
    """Whether a CPU whose best int8 instruction set is `cpu_isa` runs a variant made for
    `variant_isa` ('' means made for any CPU)."""
    return variant_isa in _SUPPORTED_ISAS[cpu_isa]


class Manifest(BaseModel):
    """Every prepared variant in a models directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[2] = SCHEMA_VERSION
    variants: list[ModelVariant] = Field(default_factory=list)

    def models_for(self, hw_class: str) -> list[ModelVariant]:
        """The variants listed for `hw_class`, whatever CPU they were quantized for."""
        return [v for v in self.variants if hw_class in v.hw_classes]

    def find(self, name: str, hw_class: str, isa: Int8Isa | None = None) -> ModelVariant | None:
        """The best variant of model `name` for `hw_class` on a CPU with `isa`, if any.

        Among the variants this CPU can run, one quantized for exactly its instruction set
        comes first, then one for an older set (avx2 on a VNNI CPU), then a portable one.
        `isa` None means the local CPU's.
        """
        cpu = int8_isa(cpu_flags()) if isa is None else isa
        order = _SUPPORTED_ISAS[cpu]
        fitting = [v for v in self.models_for(hw_class) if v.name == name and v.isa in order]
        return min(fitting, key=lambda v: order.index(v.isa), default=None)

    def variant_for(self, name: str, hw_class: str, isa: Int8Isa | None = None) -> ModelVariant:
        """Like `find`, but raises ModelsNotPrepared when no prepared variant fits."""
        found = self.find(name, hw_class, isa)
        if found is None:
            raise ModelsNotPrepared(
                f"No prepared variant of {name!r} serves hardware class {hw_class!r}"
                f"{'' if isa is None else f' on a CPU with {isa}'}; {_PREPARE_HINT}."
            )
        return found

    def served(self, hw_class: str, isa: Int8Isa | None = None) -> tuple[str, ...]:
        """The models a node of `hw_class` on a CPU with `isa` can load, in catalog order.

        A head counts only when its base model is served too. `isa` None means the local
        CPU's.
        """
        cpu = int8_isa(cpu_flags()) if isa is None else isa
        catalog = list(TASK_OF)
        names = sorted(
            {v.name for v in self.variants},
            key=lambda n: (catalog.index(n) if n in catalog else len(catalog), n),
        )
        served: list[str] = []
        for name in names:
            variant = self.find(name, hw_class, cpu)
            if variant is None:
                continue
            if variant.base_model and self.find(variant.base_model, hw_class, cpu) is None:
                continue
            served.append(name)
        return tuple(served)


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
            f"The models manifest {path} is invalid or from an older version"
            f" ({exc.error_count()} errors); {_PREPARE_HINT} again."
        ) from exc


def verify_variant(
    models_dir: Path, variant: ModelVariant, checks: FileChecks | None = None
) -> list[str]:
    """The problems with a variant's files on disk; an empty list means it is intact.

    Variants may share files (the Whisper compute types share one directory): pass the
    same `checks` to each call so that a shared file is hashed once.
    """
    problems: list[str] = []
    if variant.entry not in {f.path for f in variant.files}:
        problems.append(f"{variant.entry}: not listed among the variant's files")
    for entry in variant.files:
        problem = checks.get(entry) if checks is not None else None
        if problem is None:
            problem = _check_file(models_dir, entry)
            if checks is not None:
                checks[entry] = problem
        if problem:
            problems.append(problem)
    return problems


def _check_file(models_dir: Path, entry: ModelFile) -> str:
    path = models_dir / entry.path
    if not path.is_file():
        return f"{entry.path}: missing"
    size = path.stat().st_size
    if size != entry.bytes:
        # A size check is free; hashing 145 MB is not.
        return f"{entry.path}: {size} bytes, expected {entry.bytes}"
    if sha256_file(path) != entry.sha256:
        return f"{entry.path}: sha256 differs from the manifest"
    return ""
