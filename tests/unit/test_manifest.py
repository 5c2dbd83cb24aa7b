"""The models manifest: round trip, lookup by hardware class, verification of files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from cortensor.errors import ModelsNotPrepared
from cortensor.models.manifest import (
    MANIFEST_NAME,
    Manifest,
    ModelFile,
    ModelVariant,
    load_manifest,
    sha256_file,
    verify_variant,
)

_NAME = "all-MiniLM-L6-v2"


def _write(models_dir: Path, relative: str, content: bytes) -> ModelFile:
    path = models_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return ModelFile(path=relative, sha256=hashlib.sha256(content).hexdigest(), bytes=len(content))


def _variant(models_dir: Path, variant: str, hw_class: str) -> ModelVariant:
    directory = f"{_NAME}/{variant}"
    files = [
        _write(models_dir, f"{directory}/model.onnx", f"onnx {variant}".encode() * 100),
        _write(models_dir, f"{directory}/tokenizer.json", b'{"version": "1.0"}'),
    ]
    return ModelVariant(
        name=_NAME,
        task="embed",
        variant=variant,
        precision="int8" if variant == "int8" else "fp32",
        hw_classes=[hw_class],
        quantization="dynamic per-channel avx2" if variant == "int8" else "",
        directory=directory,
        onnx_file=f"{directory}/model.onnx",
        files=files,
    )


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    return Manifest(
        variants=[_variant(tmp_path, "fp32", "cpu-fp32"), _variant(tmp_path, "int8", "cpu-int8")]
    )


def test_round_trip_through_the_manifest_file(tmp_path: Path, manifest: Manifest) -> None:
    (tmp_path / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
    loaded = load_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.schema_version == 1


def test_models_are_frozen(manifest: Manifest) -> None:
    with pytest.raises(ValidationError):
        manifest.variants[0].name = "other"  # type: ignore[misc]


def test_variant_for_picks_the_class(manifest: Manifest) -> None:
    assert manifest.variant_for(_NAME, "cpu-int8").variant == "int8"
    assert manifest.variant_for(_NAME, "cpu-fp32").variant == "fp32"
    assert [v.variant for v in manifest.models_for("cpu-int8")] == ["int8"]
    assert manifest.models_for("cuda-fp16") == []


@pytest.mark.parametrize(
    ("name", "hw_class"), [(_NAME, "cuda-fp16"), ("no-such-model", "cpu-fp32")]
)
def test_variant_for_tells_the_user_to_prepare(
    manifest: Manifest, name: str, hw_class: str
) -> None:
    with pytest.raises(ModelsNotPrepared, match="cortensor models prepare"):
        manifest.variant_for(name, hw_class)


def test_an_empty_manifest_serves_nothing() -> None:
    with pytest.raises(ModelsNotPrepared, match="cortensor models prepare"):
        Manifest(variants=[]).variant_for(_NAME, "cpu-int8")


def test_load_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelsNotPrepared, match="cortensor models prepare"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("content", ["{not json", '{"schema_version": 1, "variants": [{}]}'])
def test_load_manifest_unreadable(tmp_path: Path, content: str) -> None:
    (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(ModelsNotPrepared, match="cortensor models prepare"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside/model.onnx", ""])
def test_paths_must_stay_inside_the_models_dir(path: str) -> None:
    with pytest.raises(ValidationError):
        ModelFile(path=path, sha256="0" * 64, bytes=1)


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * (3 << 20))
    assert sha256_file(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


def test_intact_variant_has_no_problems(tmp_path: Path, manifest: Manifest) -> None:
    for variant in manifest.variants:
        assert verify_variant(tmp_path, variant) == []


def test_verify_detects_a_missing_file(tmp_path: Path, manifest: Manifest) -> None:
    variant = manifest.variant_for(_NAME, "cpu-int8")
    (tmp_path / variant.directory / "tokenizer.json").unlink()
    problems = verify_variant(tmp_path, variant)
    assert len(problems) == 1
    assert "tokenizer.json" in problems[0]
    assert "missing" in problems[0]


def test_verify_detects_a_changed_byte(tmp_path: Path, manifest: Manifest) -> None:
    variant = manifest.variant_for(_NAME, "cpu-fp32")
    path = tmp_path / variant.onnx_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_variant(tmp_path, variant)
    assert len(problems) == 1
    assert "model.onnx" in problems[0]
    assert "sha256" in problems[0]


def test_verify_detects_a_truncated_file(tmp_path: Path, manifest: Manifest) -> None:
    variant = manifest.variant_for(_NAME, "cpu-fp32")
    path = tmp_path / variant.onnx_file
    path.write_bytes(path.read_bytes()[:-1])
    assert len(verify_variant(tmp_path, variant)) == 1


def test_verify_requires_the_onnx_file_to_be_listed(tmp_path: Path, manifest: Manifest) -> None:
    variant = manifest.variant_for(_NAME, "cpu-fp32")
    unlisted = variant.model_copy(update={"onnx_file": f"{variant.directory}/other.onnx"})
    assert any("not listed" in p for p in verify_variant(tmp_path, unlisted))
