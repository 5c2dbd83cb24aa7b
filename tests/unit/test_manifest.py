"""The models manifest: round trip, choice of variant by class and CPU, verification of files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cortensor.catalog import CLASSIFY_MODEL, EMBED_MODEL, WHISPER_BASE
from cortensor.errors import ModelsNotPrepared
from cortensor.inference.hardware import Int8Isa
from cortensor.inference.manifest import (
    MANIFEST_NAME,
    FileChecks,
    Manifest,
    ModelFile,
    ModelVariant,
    isa_supported,
    load_manifest,
    sha256_file,
    verify_variant,
)


def _write(models_dir: Path, relative: str, content: bytes) -> ModelFile:
    path = models_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return ModelFile(path=relative, sha256=hashlib.sha256(content).hexdigest(), bytes=len(content))


def _onnx(models_dir: Path, variant: str, hw_class: str, isa: str = "") -> ModelVariant:
    directory = f"{EMBED_MODEL}/{variant}"
    files = [
        _write(models_dir, f"{directory}/model.onnx", f"onnx {variant}".encode() * 100),
        _write(models_dir, f"{directory}/tokenizer.json", b'{"version": "1.0"}'),
    ]
    return ModelVariant.model_validate(
        {
            "name": EMBED_MODEL,
            "task": "embed",
            "variant": variant,
            "format": "onnx",
            "precision": "int8" if variant.startswith("int8") else "fp32",
            "hw_classes": [hw_class],
            "quantization": f"dynamic per-channel {isa}" if isa else "",
            "isa": isa,
            "directory": directory,
            "entry": f"{directory}/model.onnx",
            "files": files,
        }
    )


def _head(models_dir: Path, hw_classes: list[str]) -> ModelVariant:
    entry = _write(models_dir, f"{CLASSIFY_MODEL}/head/head.npz", b"head")
    return ModelVariant(
        name=CLASSIFY_MODEL,
        task="classify",
        variant="head",
        format="linear-head",
        precision="fp32",
        hw_classes=hw_classes,
        base_model=EMBED_MODEL,
        directory=f"{CLASSIFY_MODEL}/head",
        entry=entry.path,
        files=[entry],
    )


def _whisper(models_dir: Path, variant: str, hw_class: str, compute_type: str) -> ModelVariant:
    directory = f"{WHISPER_BASE}/ct2"
    # Every compute type shares one directory and its files.
    files = [
        _write(models_dir, f"{directory}/model.bin", b"weights" * 1000),
        _write(models_dir, f"{directory}/config.json", b"{}"),
    ]
    return ModelVariant(
        name=WHISPER_BASE,
        task="transcribe",
        variant=variant,
        format="ctranslate2",
        precision="fp16" if compute_type == "float16" else "int8",
        hw_classes=[hw_class],
        compute_type=compute_type,
        directory=directory,
        entry=f"{directory}/model.bin",
        files=files,
    )


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    return Manifest(
        variants=[
            _onnx(tmp_path, "fp32", "cpu-fp32"),
            _onnx(tmp_path, "int8", "cpu-int8", isa="avx512_vnni"),
            _onnx(tmp_path, "int8-avx2", "cpu-int8", isa="avx2"),
            _onnx(tmp_path, "fp16", "cuda-fp16"),
            _head(tmp_path, ["cpu-fp32", "cpu-int8", "cuda-fp16"]),
            _whisper(tmp_path, "int8", "cpu-int8", "int8"),
            _whisper(tmp_path, "fp16", "cuda-fp16", "float16"),
            _whisper(tmp_path, "int8-cuda", "cuda-int8", "int8_float16"),
        ]
    )


def test_round_trip_through_the_manifest_file(tmp_path: Path, manifest: Manifest) -> None:
    (tmp_path / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
    loaded = load_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.schema_version == 2


def test_models_are_frozen(manifest: Manifest) -> None:
    with pytest.raises(ValidationError):
        manifest.variants[0].name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variant_isa", "cpu_isa", "runs"),
    [
        ("", "avx512_vnni", True),
        ("", "avx2", True),
        ("", "other", True),
        ("avx2", "avx512_vnni", True),
        ("avx2", "avx2", True),
        ("avx2", "other", False),
        ("avx512_vnni", "avx512_vnni", True),
        ("avx512_vnni", "avx2", False),
        ("avx512_vnni", "other", False),
    ],
)
def test_which_cpus_run_which_variants(variant_isa: str, cpu_isa: Int8Isa, runs: bool) -> None:
    assert isa_supported(variant_isa, cpu_isa) is runs


@pytest.mark.parametrize(
    ("name", "hw_class", "isa", "expected"),
    [
        (EMBED_MODEL, "cpu-int8", "avx512_vnni", "int8"),
        (EMBED_MODEL, "cpu-int8", "avx2", "int8-avx2"),
        (EMBED_MODEL, "cpu-int8", "other", None),
        (EMBED_MODEL, "cpu-fp32", "avx512_vnni", "fp32"),
        (EMBED_MODEL, "cpu-fp32", "other", "fp32"),
        (EMBED_MODEL, "cuda-fp16", "avx2", "fp16"),
        (EMBED_MODEL, "cuda-int8", "avx512_vnni", None),
        (CLASSIFY_MODEL, "cpu-int8", "avx2", "head"),
        (CLASSIFY_MODEL, "cuda-int8", "avx2", None),
        (WHISPER_BASE, "cpu-int8", "other", "int8"),
        (WHISPER_BASE, "cuda-int8", "avx2", "int8-cuda"),
        (WHISPER_BASE, "cpu-fp32", "avx2", None),
        ("no-such-model", "cpu-fp32", "avx2", None),
    ],
)
def test_find_picks_the_variant_for_class_and_cpu(
    manifest: Manifest, name: str, hw_class: str, isa: Int8Isa, expected: str | None
) -> None:
    found = manifest.find(name, hw_class, isa)
    assert (found.variant if found else None) == expected
    if expected is None:
        with pytest.raises(ModelsNotPrepared, match="cortensor models prepare"):
            manifest.variant_for(name, hw_class, isa)
    else:
        assert manifest.variant_for(name, hw_class, isa) == found


def test_the_exact_isa_wins_whatever_the_order(tmp_path: Path) -> None:
    vnni = _onnx(tmp_path, "int8", "cpu-int8", isa="avx512_vnni")
    avx2 = _onnx(tmp_path, "int8-avx2", "cpu-int8", isa="avx2")
    portable = _onnx(tmp_path, "int8-any", "cpu-int8")
    for order in ([portable, avx2, vnni], [vnni, portable, avx2], [avx2, vnni, portable]):
        manifest = Manifest(variants=order)
        assert manifest.variant_for(EMBED_MODEL, "cpu-int8", "avx512_vnni") == vnni
        assert manifest.variant_for(EMBED_MODEL, "cpu-int8", "avx2") == avx2
        assert manifest.variant_for(EMBED_MODEL, "cpu-int8", "other") == portable
    # Without a variant for its own ISA, a VNNI CPU takes the AVX2 one before a portable one.
    manifest = Manifest(variants=[portable, avx2])
    assert manifest.variant_for(EMBED_MODEL, "cpu-int8", "avx512_vnni") == avx2


def test_without_an_isa_the_local_cpu_decides(manifest: Manifest) -> None:
    from cortensor.inference.hardware import cpu_flags, int8_isa

    local = int8_isa(cpu_flags())
    assert manifest.find(EMBED_MODEL, "cpu-int8") == manifest.find(EMBED_MODEL, "cpu-int8", local)


@pytest.mark.parametrize(
    ("hw_class", "isa", "expected"),
    [
        ("cpu-int8", "avx512_vnni", (EMBED_MODEL, CLASSIFY_MODEL, WHISPER_BASE)),
        ("cpu-int8", "avx2", (EMBED_MODEL, CLASSIFY_MODEL, WHISPER_BASE)),
        # No int8 graph runs here, so neither does the head over it; Whisper does.
        ("cpu-int8", "other", (WHISPER_BASE,)),
        ("cpu-fp32", "other", (EMBED_MODEL, CLASSIFY_MODEL)),
        ("cuda-fp16", "avx2", (EMBED_MODEL, CLASSIFY_MODEL, WHISPER_BASE)),
        ("cuda-int8", "avx2", (WHISPER_BASE,)),
    ],
)
def test_served_lists_what_a_class_can_load(
    manifest: Manifest, hw_class: str, isa: Int8Isa, expected: tuple[str, ...]
) -> None:
    assert manifest.served(hw_class, isa) == expected


def test_a_head_without_its_base_model_is_not_served(tmp_path: Path) -> None:
    manifest = Manifest(variants=[_head(tmp_path, ["cpu-fp32"])])
    assert manifest.served("cpu-fp32", "avx2") == ()


def test_models_for_lists_every_variant_of_a_class(manifest: Manifest) -> None:
    assert [(v.name, v.variant) for v in manifest.models_for("cpu-int8")] == [
        (EMBED_MODEL, "int8"),
        (EMBED_MODEL, "int8-avx2"),
        (CLASSIFY_MODEL, "head"),
        (WHISPER_BASE, "int8"),
    ]
    assert Manifest().models_for("cpu-fp32") == []


def test_an_empty_manifest_serves_nothing() -> None:
    with pytest.raises(ModelsNotPrepared, match="cortensor models prepare"):
        Manifest(variants=[]).variant_for(EMBED_MODEL, "cpu-int8", "avx2")
    assert Manifest().served("cpu-fp32", "avx2") == ()


def test_load_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelsNotPrepared, match="cortensor models prepare"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"schema_version": 2, "variants": [{}]}',
        # A manifest of the first version (onnx_file, no format) must be prepared again.
        '{"schema_version": 1, "variants": []}',
    ],
)
def test_load_manifest_unreadable(tmp_path: Path, content: str) -> None:
    (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(ModelsNotPrepared, match="cortensor models prepare"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside/model.onnx", ""])
def test_paths_must_stay_inside_the_models_dir(path: str) -> None:
    with pytest.raises(ValidationError):
        ModelFile(path=path, sha256="0" * 64, bytes=1)


@pytest.mark.parametrize(
    ("field", "value"), [("format", "gguf"), ("isa", "neon"), ("entry", "../x.onnx")]
)
def test_variant_fields_are_validated(manifest: Manifest, field: str, value: Any) -> None:
    data = manifest.variants[0].model_dump() | {field: value}
    with pytest.raises(ValidationError):
        ModelVariant.model_validate(data)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * (3 << 20))
    assert sha256_file(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


def test_intact_variant_has_no_problems(tmp_path: Path, manifest: Manifest) -> None:
    for variant in manifest.variants:
        assert verify_variant(tmp_path, variant) == []


def test_verify_detects_a_missing_file(tmp_path: Path, manifest: Manifest) -> None:
    variant = manifest.variant_for(EMBED_MODEL, "cpu-int8", "avx512_vnni")
    (tmp_path / variant.directory / "tokenizer.json").unlink()
    problems = verify_variant(tmp_path, variant)
    assert len(problems) == 1
    assert "tokenizer.json" in problems[0]
    assert "missing" in problems[0]


def test_verify_detects_a_changed_byte(tmp_path: Path, manifest: Manifest) -> None:
    variant = manifest.variant_for(EMBED_MODEL, "cpu-fp32", "avx2")
    path = tmp_path / variant.entry
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_variant(tmp_path, variant)
    assert len(problems) == 1
    assert "model.onnx" in problems[0]
    assert "sha256" in problems[0]


def test_verify_detects_a_truncated_file(tmp_path: Path, manifest: Manifest) -> None:
    variant = manifest.variant_for(EMBED_MODEL, "cpu-fp32", "avx2")
    path = tmp_path / variant.entry
    path.write_bytes(path.read_bytes()[:-1])
    assert len(verify_variant(tmp_path, variant)) == 1


def test_verify_requires_the_entry_to_be_listed(tmp_path: Path, manifest: Manifest) -> None:
    variant = manifest.variant_for(EMBED_MODEL, "cpu-fp32", "avx2")
    unlisted = variant.model_copy(update={"entry": f"{variant.directory}/other.onnx"})
    assert any("not listed" in p for p in verify_variant(tmp_path, unlisted))


def test_shared_files_are_checked_once_per_run(tmp_path: Path, manifest: Manifest) -> None:
    variants = [v for v in manifest.variants if v.name == WHISPER_BASE]
    checks: FileChecks = {}
    assert all(verify_variant(tmp_path, v, checks) == [] for v in variants)
    assert set(checks) == set(variants[0].files)
    # A damaged shared file is reported for every variant that lists it, from one check.
    (tmp_path / variants[0].entry).write_bytes(b"weights" * 999 + b"x" * 7)
    checks = {}
    for variant in variants:
        assert [p.split(":")[0] for p in verify_variant(tmp_path, variant, checks)] == [
            variant.entry
        ]
    assert sorted(checks.values()) == ["", f"{variants[0].entry}: sha256 differs from the manifest"]


def test_a_recorded_check_is_trusted(tmp_path: Path, manifest: Manifest) -> None:
    variant = manifest.variant_for(WHISPER_BASE, "cpu-int8", "avx2")
    checks: FileChecks = dict.fromkeys(variant.files, "")
    (tmp_path / variant.entry).unlink()
    assert verify_variant(tmp_path, variant, checks) == []
    assert verify_variant(tmp_path, variant) == [f"{variant.entry}: missing"]
