"""What quantization costs and buys: int8 against fp32 for every model, speed and fidelity.

Each figure is measured on this machine in one process with one thread, so that the
two precisions are compared under the same conditions. Used by ops/bench.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cortensor.catalog import CLASSIFY_MODEL, EMBED_MODEL, WHISPER_BASE, WHISPER_TINY_EN
from cortensor.inference.manifest import Manifest, ModelVariant, load_manifest
from cortensor.inference.runtimes.classifier import ClassifierRuntime
from cortensor.inference.runtimes.embedding import EmbeddingRuntime
from cortensor.inference.runtimes.whisper import WhisperRuntime
from cortensor.protocol.comparators.transcribe import word_error_rate
from cortensor.settings import Settings

CLASSES = {"fp32": "cpu-fp32", "int8": "cpu-int8"}
"""The hardware class whose variant stands for each precision."""


def _per_second(work: Callable[[], object], items: int, rounds: int = 3) -> float:
    work()  # warm-up: first calls allocate
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        rates.append(items / (time.perf_counter() - started))
    return statistics.median(rates)


def _one_by_one(call: Callable[[list[str]], object], texts: Sequence[str]) -> Callable[[], None]:
    """Work that runs `call` on each text alone, as a node does."""

    def work() -> None:
        for text in texts:
            call([text])

    return work


def batched_rate(
    source: Settings | Path,
    threads: int,
    batch: int = 16,
    *,
    texts: Sequence[str] | None = None,
    rounds: int = 5,
) -> float:
    """int8 embeddings per second with `batch` texts per call, called directly in this
    process on `threads` intra-op threads (median of `rounds` passes over `texts`,
    default 320 short sentences). `source` is the settings or the models directory.

    The network serves int8 graphs whose answers do not depend on the batch, so a node
    may put several requests' texts in one call; batch=1 gives the single-text rate."""
    models_dir = source.models_dir if isinstance(source, Settings) else source
    variant = load_manifest(models_dir).variant_for(EMBED_MODEL, "cpu-int8")
    runtime = EmbeddingRuntime.from_manifest(models_dir, variant, threads=threads)
    texts = list(texts) if texts is not None else _texts(320)
    calls = [texts[start : start + batch] for start in range(0, len(texts), batch)]

    def work() -> None:
        for call in calls:
            runtime.embed(call)

    return _per_second(work, len(texts), rounds)


def _texts(n: int) -> list[str]:
    words = ["river", "ledger", "quiet", "station", "network", "guard", "morning", "vector"]
    return [
        f"Sentence {i}: {' '.join(words[(i * 3 + j) % len(words)] for j in range(4 + i % 9))}."
        for i in range(n)
    ]


def _embedder(models_dir: Path, variant: ModelVariant) -> EmbeddingRuntime:
    return EmbeddingRuntime.from_manifest(models_dir, variant, threads=1)


def embedding(models_dir: Path, manifest: Manifest, texts: Sequence[str]) -> dict[str, Any]:
    """Single-text embeddings per second for each variant, and each int8 variant's
    cosine to fp32 (min and mean over `texts`)."""
    fp32 = _embedder(models_dir, manifest.variant_for(EMBED_MODEL, "cpu-fp32"))
    reference = fp32.embed(texts)
    report: dict[str, Any] = {
        "texts": len(texts),
        "fp32_per_s": round(_per_second(_one_by_one(fp32.embed, texts), len(texts)), 1),
    }
    for variant in manifest.variants:
        if variant.name != EMBED_MODEL or variant.precision != "int8":
            continue
        try:
            runtime = _embedder(models_dir, variant)
            got = runtime.embed(texts)
        except Exception as exc:  # a variant for another CPU may not run here
            report[variant.variant] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        cosine = np.sum(got * reference, axis=1)
        report[variant.variant] = {
            "per_s": round(_per_second(_one_by_one(runtime.embed, texts), len(texts)), 1),
            "cosine_to_fp32_min": round(float(cosine.min()), 4),
            "cosine_to_fp32_mean": round(float(cosine.mean()), 4),
        }
    return report


def classification(models_dir: Path, manifest: Manifest, texts: Sequence[str]) -> dict[str, Any]:
    """Texts classified per second at each precision, and how often int8's top label is
    fp32's, with the largest difference in the top label's score."""
    runtimes = {
        precision: ClassifierRuntime.from_manifest(
            models_dir,
            manifest.variant_for(CLASSIFY_MODEL, hw_class),
            _embedder(models_dir, manifest.variant_for(EMBED_MODEL, hw_class)),
        )
        for precision, hw_class in CLASSES.items()
    }
    answers = {p: r.classify(texts, 1) for p, r in runtimes.items()}
    same = [a.label == b.label for a, b in zip(answers["fp32"], answers["int8"], strict=True)]
    gaps = [
        abs(a.score - b.score)
        for a, b in zip(answers["fp32"], answers["int8"], strict=True)
        if a.label == b.label
    ]
    return {
        "texts": len(texts),
        **{
            f"{p}_per_s": round(
                _per_second(_one_by_one(partial(r.classify, top_k=5), texts), len(texts)), 1
            )
            for p, r in runtimes.items()
        },
        "top1_agreement": round(sum(same) / len(same), 4),
        "top1_score_max_diff": round(max(gaps, default=0.0), 4),
    }


def speech(
    models_dir: Path, manifest: Manifest, wav: bytes, audio_s: float, spoken: str
) -> dict[str, Any]:
    """For each Whisper model: real-time factor at int8 and fp32 on one thread (seconds
    of compute per second of audio), word error rate against the spoken text, and the
    word error rate between the two precisions' transcripts."""
    report: dict[str, Any] = {"audio_s": round(audio_s, 2)}
    for model in (WHISPER_TINY_EN, WHISPER_BASE):
        texts: dict[str, str] = {}
        figures: dict[str, Any] = {}
        for precision, hw_class in CLASSES.items():
            runtime = WhisperRuntime.from_manifest(
                models_dir, manifest.variant_for(model, hw_class), threads=1
            )
            runtime.transcribe(wav[: 16_000 * 2 * 3 + 44], "en")  # warm-up on 3 s
            started = time.perf_counter()
            texts[precision] = runtime.transcribe(wav, "en").text
            elapsed = time.perf_counter() - started
            figures[f"{precision}_rtf"] = round(elapsed / audio_s, 4)
            figures[f"{precision}_wer"] = round(word_error_rate(spoken, texts[precision]), 4)
        figures["wer_int8_vs_fp32"] = round(word_error_rate(texts["fp32"], texts["int8"]), 4)
        report[model] = figures
    return report


def measure(
    models_dir: Path,
    *,
    sentences: Sequence[str],
    questions: Sequence[str],
    wav: bytes,
    audio_s: float,
    spoken: str,
) -> dict[str, Any]:
    """Every int8-against-fp32 figure, for the benchmark's JSON."""
    manifest = load_manifest(models_dir)
    return {
        EMBED_MODEL: embedding(models_dir, manifest, sentences),
        CLASSIFY_MODEL: classification(models_dir, manifest, questions),
        "speech": speech(models_dir, manifest, wav, audio_s, spoken),
    }
