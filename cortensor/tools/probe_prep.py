"""Known-answer probes: inputs whose reference outputs are prepared once, offline.

Probes are drawn from the network's own verified traffic (cortensor.protocol.probing);
these prepared ones only start a network that has none yet. The guard compares a probe's
answer with the reference, computed here by the fp32 variant of each model.
`cortensor models prepare` writes them to probes.json beside the models directory
(Settings.probes_path), where routers read them and nodes, which read the models
directory, do not. A node that passes enough probes in a row is admitted
(cortensor.protocol.reputation).

An honest node of any precision must pass every probe, so a candidate is kept only
when the int8 variant's answer agrees with the fp32 reference under the task's
comparator: speech that Whisper hears differently at two precisions, or a text whose
two best intents are nearly tied, would fail honest nodes.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from cortensor.catalog import (
    CLASSIFY_MODEL,
    EMBED_MODEL,
    GENERATE_MODEL,
    WHISPER_BASE,
    WHISPER_TINY_EN,
)
from cortensor.errors import ModelsNotPrepared
from cortensor.inference.manifest import Manifest
from cortensor.inference.probes import PROBES_NAME, default_probes_path, load_probes
from cortensor.protocol.probing import PROBE_TOP_K, Probe, ProbeSet

REFERENCE_CLASS = "cpu-fp32"
CHECK_CLASS = "cpu-int8"
"""A probe is kept when this class's variant agrees with the reference."""

TEXTS: tuple[str, ...] = (
    "Where is the nearest train station?",
    "Please book a table for four at eight tonight.",
    "What time does the pharmacy close on Sundays?",
    "The river flooded the lower fields after the storm.",
    "Turn off the lights in the living room.",
    "How do I change the password of my account?",
    "A quiet street with old houses and tall trees.",
    "Remind me to water the plants tomorrow morning.",
    "What is the exchange rate between euros and dollars?",
    "Our team won the match in the last minute.",
    "I would like to cancel my hotel reservation.",
    "Explain how photosynthesis works in simple words.",
)
"""Probe texts: each embed or classify probe takes two of them."""

SPOKEN: tuple[str, ...] = (
    "The garden gate was painted green last spring.",
    "Please bring a warm coat because the evening will be cold.",
    "The library opens early and closes late on weekdays.",
    "We planted apple trees along the northern wall.",
    "The bus to the airport leaves every twenty minutes.",
)
"""Probe sentences spoken by espeak-ng for transcribe probes."""


ASKED: tuple[str, ...] = (
    "What is the capital of France? Answer in one sentence.",
    "How many days are there in a week?",
    "What is the capital of Japan?",
    "What is the capital of Germany?",
    "What is the capital of Spain?",
    "What is the boiling point of water in Celsius?",
    "What is the chemical symbol for gold?",
    "Who wrote Romeo and Juliet?",
    "What is the freezing point of water in Celsius?",
    "What is the capital of England?",
)
"""Prompts of generate probes, one per probe: short questions with short answers, most of
which the int8 and fp32 graphs answer alike (an unstable one is left out)."""
PROBE_MAX_TOKENS = 32
"""A generate probe's max_tokens: enough for the short answers asked, cheap to check."""


PROBE_VERSION = 3
"""Raised whenever the way probes are chosen changes, so that prepared sets are redone."""


def _source(manifest: Manifest) -> str:
    # The checking class's variants count too: a new int8 graph may move a probe's
    # answer across its comparator's threshold.
    digest = hashlib.sha256(
        f"{PROBE_VERSION}\n{TEXTS}\n{SPOKEN}\n{ASKED}\n{PROBE_MAX_TOKENS}\n".encode()
    )
    for v in sorted(manifest.variants, key=lambda v: (v.name, v.variant)):
        if {REFERENCE_CLASS, CHECK_CLASS} & set(v.hw_classes):
            for f in v.files:
                digest.update(f"{v.name}/{v.variant}/{f.path}:{f.sha256}\n".encode())
    return digest.hexdigest()


def prepare_probes(
    models_dir: Path,
    manifest: Manifest,
    *,
    target: Path | None = None,
    force: bool = False,
    log: Callable[[str], None],
) -> ProbeSet:
    """Compute the reference output of every probe with each model's fp32 variant and
    write them to `target` (default: beside the models directory), unless it is already
    up to date with the manifest.

    A probe set left inside the models directory by an older version is moved out (or
    removed), since every node reads that directory.
    """
    target = target or default_probes_path(models_dir)
    if target.resolve().parent == models_dir.resolve():
        raise ModelsNotPrepared(
            f"the probe set must not be written into the models directory {models_dir},"
            " which every node reads; set CORTENSOR_PROBES_FILE to a path outside it"
        )
    source = _source(manifest)
    _move_out_of(models_dir, target)
    if not force:
        try:
            current = load_probes(target)
        except ModelsNotPrepared:
            current = None
        if current is not None and current.source == source:
            log("probes: up to date")
            return current
    candidates = _text_probes(models_dir, manifest) + _speech_probes(models_dir, manifest)
    if any(v.name == GENERATE_MODEL for v in manifest.variants):
        candidates += _generate_probes(models_dir, manifest)
    probes = [probe for probe, stable in candidates if stable]
    if {p.model for p in probes} != {p.model for p, _ in candidates}:
        raise ModelsNotPrepared("a model has no probe whose answer is stable across precisions")
    probe_set = ProbeSet(source=source, probes=probes)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_text(probe_set.model_dump_json(), encoding="utf-8")
    partial.chmod(0o600)  # the router's alone: a node that reads it passes every probe in it
    partial.replace(target)
    log(f"probes: {len(probes)} written ({len(candidates) - len(probes)} unstable left out)")
    return probe_set


def _move_out_of(models_dir: Path, target: Path) -> None:
    """Move a probe set an older version wrote inside the models directory to `target`
    (or drop it when `target` exists), so that nodes cannot read it."""
    inside = models_dir / PROBES_NAME
    if not inside.exists():
        return
    if target.exists():
        inside.unlink()
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(inside, target)


def _text_probes(models_dir: Path, manifest: Manifest) -> list[tuple[Probe, bool]]:
    from cortensor.inference.runtimes.classifier import ClassifierRuntime
    from cortensor.inference.runtimes.embedding import EmbeddingRuntime
    from cortensor.protocol.comparators import COMPARATORS

    found: list[tuple[Probe, bool]] = []
    runtimes = {}
    for hw_class in (REFERENCE_CLASS, CHECK_CLASS):
        embedder = EmbeddingRuntime.from_manifest(
            models_dir, manifest.variant_for(EMBED_MODEL, hw_class)
        )
        classifier = ClassifierRuntime.from_manifest(
            models_dir, manifest.variant_for(CLASSIFY_MODEL, hw_class), embedder
        )
        runtimes[hw_class] = (embedder, classifier)
    for first in range(0, len(TEXTS), 2):
        texts = list(TEXTS[first : first + 2])
        answers = {
            c: (
                e.embed(texts).tolist(),
                [x.model_dump(mode="json") for x in k.classify(texts, PROBE_TOP_K)],
            )
            for c, (e, k) in runtimes.items()
        }
        (vectors, classes), (vectors_int8, classes_int8) = (
            answers[REFERENCE_CLASS],
            answers[CHECK_CLASS],
        )
        for task, model, reference, check in (
            ("embed", EMBED_MODEL, vectors, vectors_int8),
            ("classify", CLASSIFY_MODEL, classes, classes_int8),
        ):
            stable = COMPARATORS[task](reference, "fp32", check, "int8")
            found.append((Probe(task=task, model=model, inputs=texts, reference=reference), stable))
    return found


def _generate_probes(models_dir: Path, manifest: Manifest) -> list[tuple[Probe, bool]]:
    from cortensor.inference.runtimes.generator import GeneratorRuntime
    from cortensor.inference.similarity import text_similarity
    from cortensor.protocol.comparators import COMPARATORS, generate
    from cortensor.schemas import ChatTurn

    generate.use_similarity(lambda: text_similarity(models_dir))
    reference, check = (
        GeneratorRuntime.from_manifest(models_dir, manifest.variant_for(GENERATE_MODEL, c))
        for c in (REFERENCE_CLASS, CHECK_CLASS)
    )
    found: list[tuple[Probe, bool]] = []
    for prompt in ASKED:
        turns = [[ChatTurn(role="user", content=prompt)]]
        expected = [g.model_dump(mode="json") for g in reference.generate(turns, PROBE_MAX_TOKENS)]
        given = [g.model_dump(mode="json") for g in check.generate(turns, PROBE_MAX_TOKENS)]
        probe = Probe(
            task="generate",
            model=GENERATE_MODEL,
            inputs=[prompt],
            max_tokens=PROBE_MAX_TOKENS,
            reference=expected,
        )
        found.append((probe, COMPARATORS["generate"](expected, "fp32", given, "int8")))
    return found


def _speech_probes(models_dir: Path, manifest: Manifest) -> list[tuple[Probe, bool]]:
    from cortensor.inference.runtimes.whisper import WhisperRuntime
    from cortensor.protocol.comparators import COMPARATORS
    from cortensor.tools import speech

    found: list[tuple[Probe, bool]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clips = [speech.speak(t, folder / f"{i}.wav").read_bytes() for i, t in enumerate(SPOKEN)]
        for model in (WHISPER_BASE, WHISPER_TINY_EN):
            reference, check = (
                WhisperRuntime.from_manifest(models_dir, manifest.variant_for(model, c))
                for c in (REFERENCE_CLASS, CHECK_CLASS)
            )
            for wav in clips:
                heard = reference.transcribe(wav, "en").model_dump(mode="json")
                again = check.transcribe(wav, "en").model_dump(mode="json")
                probe = Probe(
                    task="transcribe",
                    model=model,
                    audio=base64.b64encode(wav).decode("ascii"),
                    language="en",
                    reference=heard,
                )
                found.append((probe, COMPARATORS["transcribe"](heard, "fp32", again, "int8")))
    return found


def describe(probe_set: ProbeSet) -> dict[str, int]:
    """How many probes each model has."""
    counts: dict[str, int] = {}
    for p in probe_set.probes:
        counts[p.model] = counts.get(p.model, 0) + 1
    return counts
