"""The classifier and Whisper runtimes, and a node loading what its class serves (real models)."""

from __future__ import annotations

import io
import re
import shutil
import warnings
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest

from cortensor.catalog import CLASSIFY_MODEL, EMBED_MODEL, TASK_OF, WHISPER_BASE, WHISPER_TINY_EN
from cortensor.errors import BadInput, ModelsNotPrepared, SetupIncomplete
from cortensor.inference.hardware import cuda_available
from cortensor.inference.manifest import MANIFEST_NAME, load_manifest
from cortensor.inference.runtimes.classifier import ClassifierRuntime
from cortensor.inference.runtimes.embedding import EmbeddingRuntime
from cortensor.inference.runtimes.whisper import WhisperRuntime
from cortensor.schemas import MAX_TOP_K, Transcript
from cortensor.services.node.main import build_node
from cortensor.services.node.service import NodeService
from cortensor.tools.speech import SENTENCES, speak
from tests.conftest import make_settings
from tests.node_keys import key_file

pytestmark = [pytest.mark.models, pytest.mark.slow]

TEXTS = [
    "What's the weather like in Paris tomorrow?",
    "Set an alarm for 6:30 am.",
    "Play some jazz music in the living room.",
    "How many calories are in a banana?",
    "Translate 'good morning' into Japanese.",
    "Book a table for two at an Italian restaurant tonight.",
    "Transfer 200 dollars from checking to savings.",
    "What is the meaning of life?",
    "Remind me to call mom at 5 pm.",
    "Turn off the lights in the kitchen.",
    "Hi there!",
    "Goodbye, talk to you later.",
    "Please cancel my subscription.",
    "What's the exchange rate between euros and dollars?",
    "Tell me a joke about programmers.",
    "How do I reset my password?",
    "My flight was delayed, can I get compensation?",
    "Schedule a meeting with the design team next Tuesday.",
    "Who won the World Cup in 2018?",
    "Add milk, eggs and bread to my shopping list.",
    "What time is it in Tokyo right now?",
    "Define the word serendipity.",
    "How far is the moon from the earth?",
    "Order a large pepperoni pizza for delivery.",
    "I need directions to the nearest gas station.",
    "Spell necessary.",
    "Convert 5 miles to kilometers.",
    "Is it going to rain this weekend?",
    "Set a timer for ten minutes.",
    "What's my bank balance?",
    "Yes, that's right.",
    "No, I don't think so.",
    "Flip a coin for me.",
    "Roll a six sided die.",
    "What is your name?",
    "Thank you so much!",
    "How do I change the oil in my car?",
    "Find me a recipe for lasagna.",
    "The cat sat on the mat.",
    "Photosynthesis converts light energy into chemical energy.",
]

_WORDS = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def _wer(reference: str, hypothesis: str) -> float:
    return float(
        jiwer.wer(reference, hypothesis, reference_transform=_WORDS, hypothesis_transform=_WORDS)
    )


@pytest.fixture(scope="module")
def embedders(models_dir: Path) -> dict[str, EmbeddingRuntime]:
    manifest = load_manifest(models_dir)
    runtimes = {
        hw: EmbeddingRuntime.from_manifest(models_dir, manifest.variant_for(EMBED_MODEL, hw))
        for hw in ("cpu-fp32", "cpu-int8")
    }
    # The graph an AVX2 node runs (the same as cpu-int8's on an AVX2 machine).
    avx2 = manifest.variant_for(EMBED_MODEL, "cpu-int8", "avx2")
    runtimes["cpu-int8/avx2"] = EmbeddingRuntime.from_manifest(models_dir, avx2)
    return runtimes


@pytest.fixture(scope="module")
def classifiers(
    models_dir: Path, embedders: dict[str, EmbeddingRuntime]
) -> dict[str, ClassifierRuntime]:
    head = load_manifest(models_dir).variant_for(CLASSIFY_MODEL, "cpu-fp32")
    return {
        hw: ClassifierRuntime.from_manifest(models_dir, head, embedder)
        for hw, embedder in embedders.items()
    }


@pytest.fixture(scope="module")
def sklearn_head() -> Any:
    import joblib
    import rag_intent_classifier
    from sklearn.exceptions import InconsistentVersionWarning

    weights = Path(rag_intent_classifier.__file__ or "").parent / "models"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InconsistentVersionWarning)
        return joblib.load(weights / "LogisticRegression.joblib"), joblib.load(
            weights / "label_map.joblib"
        )


# -- classification -------------------------------------------------------------------------


def test_probabilities_equal_sklearns_predict_proba(
    classifiers: dict[str, ClassifierRuntime],
    embedders: dict[str, EmbeddingRuntime],
    sklearn_head: Any,
) -> None:
    model, label_map = sklearn_head
    vectors = embedders["cpu-fp32"].embed(TEXTS).astype(np.float64)
    expected = model.predict_proba(vectors)
    classifier = classifiers["cpu-fp32"]
    np.testing.assert_allclose(classifier.probabilities(TEXTS), expected, rtol=0, atol=1e-6)
    assert classifier.labels == tuple(label_map[c] for c in model.classes_)
    for text, result, row in zip(TEXTS, classifier.classify(TEXTS, 5), expected, strict=True):
        best = int(np.argmax(row))
        assert result.label == label_map[model.classes_[best]], text
        assert abs(result.score - row[best]) <= 1e-6
        for item in result.top:
            index = classifier.labels.index(item.label)
            assert abs(item.score - row[index]) <= 1e-6


def test_the_top_labels_are_ordered_and_rounded(classifiers: dict[str, ClassifierRuntime]) -> None:
    classifier = classifiers["cpu-fp32"]
    results = classifier.classify(TEXTS[:5], 7)
    for result in results:
        assert len(result.top) == 7
        assert (result.label, result.score) == (result.top[0].label, result.top[0].score)
        keys = [(-item.score, item.label) for item in result.top]
        assert keys == sorted(keys)
        assert all(item.score == round(item.score, 6) for item in result.top)
    assert [r.label for r in results] == ["weather", "alarm", "play_music", "calories", "translate"]
    assert all(r.score > 0.5 for r in results)
    # A result names at most MAX_TOP_K labels; the probabilities behind it cover them all.
    [everything] = classifier.probabilities(["Hi there!"])
    assert len(everything) == len(classifier.labels) == 157
    assert float(everything.sum()) == pytest.approx(1.0, abs=1e-6)
    assert len(classifier.classify(["Hi there!"], MAX_TOP_K)[0].top) == MAX_TOP_K
    assert classifier.classify([], 3) == []


@pytest.mark.parametrize("int8_graph", ["cpu-int8", "cpu-int8/avx2"])
def test_fp32_and_int8_agree_on_the_top_label(
    int8_graph: str, classifiers: dict[str, ClassifierRuntime]
) -> None:
    fp32 = classifiers["cpu-fp32"].classify(TEXTS, 3)
    int8 = classifiers[int8_graph].classify(TEXTS, 3)
    agree = [a.label == b.label for a, b in zip(fp32, int8, strict=True)]
    # Where the head is sure, the int8 embedding never changes its answer.
    sure = [ok for ok, a in zip(agree, fp32, strict=True) if a.score >= 0.5]
    assert all(sure)
    assert len(sure) >= 30
    assert sum(agree) / len(agree) >= 0.9
    differences = [abs(a.score - b.score) for a, b, ok in zip(fp32, int8, agree, strict=True) if ok]
    # Measured: 0.07 with the VNNI graph, 0.11 with the AVX2 one (both on a VNNI CPU).
    assert max(differences) <= 0.15


def test_a_head_that_does_not_fit_says_to_prepare(
    tmp_path: Path, embedders: dict[str, EmbeddingRuntime]
) -> None:
    with pytest.raises(ModelsNotPrepared, match="cortensor models prepare"):
        ClassifierRuntime(embedders["cpu-fp32"], tmp_path / "absent.npz")
    np.savez(
        tmp_path / "bad.npz", coef=np.zeros((3, 384)), intercept=np.zeros(2), labels=np.array(["a"])
    )
    with pytest.raises(ModelsNotPrepared, match="inconsistent"):
        ClassifierRuntime(embedders["cpu-fp32"], tmp_path / "bad.npz")


# -- speech ---------------------------------------------------------------------------------


SPOKEN = SENTENCES[3:9]
"""Six plain sentences (the tongue twister among the first three is too hard for tiny.en)."""
WER_BOUND = 0.25
"""Greedy decoding of espeak-ng's voice: measured ~0.1-0.2 over these sentences for both
models and compute types (base, beam 1, all twenty sentences: 0.14). The bound catches
broken decoding, which scores near 1, not a small loss of quality."""


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("speech")
    return {text: speak(text, folder / f"{i}.wav").read_bytes() for i, text in enumerate(SPOKEN)}


@pytest.fixture(scope="module")
def whisper(models_dir: Path) -> dict[tuple[str, str], WhisperRuntime]:
    manifest = load_manifest(models_dir)
    return {
        (name, hw): WhisperRuntime.from_manifest(
            models_dir, manifest.variant_for(name, hw), threads=2
        )
        for name in (WHISPER_BASE, WHISPER_TINY_EN)
        for hw in ("cpu-int8", "cpu-fp32")
    }


@pytest.mark.parametrize("name", [WHISPER_BASE, WHISPER_TINY_EN])
@pytest.mark.parametrize("hw_class", ["cpu-int8", "cpu-fp32"])
def test_synthetic_speech_is_transcribed(
    name: str,
    hw_class: str,
    whisper: dict[tuple[str, str], WhisperRuntime],
    speech: dict[str, bytes],
) -> None:
    runtime = whisper[(name, hw_class)]
    transcripts = []
    for wav in speech.values():
        transcript = runtime.transcribe(wav, None if name == WHISPER_BASE else "en")
        assert transcript.language == "en"
        with wave.open(io.BytesIO(wav)) as reader:
            assert transcript.duration_s == pytest.approx(reader.getnframes() / 16_000)
        assert transcript.segments
        assert transcript.text == " ".join(s.text for s in transcript.segments)
        assert not re.search(r"\s{2,}|^\s|\s$", transcript.text)
        for segment in transcript.segments:
            assert 0 <= segment.start <= segment.end <= transcript.duration_s + 0.5
            assert segment.start == round(segment.start, 2)
            assert segment.end == round(segment.end, 2)
        transcripts.append(transcript.text)
    assert _wer(" ".join(speech), " ".join(transcripts)) <= WER_BOUND, transcripts


def test_transcription_is_deterministic(
    whisper: dict[tuple[str, str], WhisperRuntime], speech: dict[str, bytes]
) -> None:
    runtime = whisper[(WHISPER_BASE, "cpu-int8")]
    wav = next(iter(speech.values()))
    first: Transcript = runtime.transcribe(wav, "en")
    assert runtime.transcribe(wav, "en") == first
    assert runtime.transcribe(wav, None) == first


@pytest.mark.parametrize("fmt", ["flac", "mp3", "ogg"])
def test_compressed_audio_is_decoded(
    fmt: str, whisper: dict[tuple[str, str], WhisperRuntime], tmp_path: Path
) -> None:
    text = SPOKEN[0]
    audio = speak(text, tmp_path / f"speech.{fmt}", fmt=fmt).read_bytes()
    transcript = whisper[(WHISPER_TINY_EN, "cpu-int8")].transcribe(audio, None)
    assert _wer(text, transcript.text) <= WER_BOUND


def test_the_english_model_ignores_the_language(
    whisper: dict[tuple[str, str], WhisperRuntime], speech: dict[str, bytes]
) -> None:
    runtime = whisper[(WHISPER_TINY_EN, "cpu-int8")]
    assert runtime.english_only
    assert not whisper[(WHISPER_BASE, "cpu-int8")].english_only
    wav = next(iter(speech.values()))
    assert runtime.transcribe(wav, "de").language == "en"


@pytest.mark.parametrize("data", [b"", b"not audio at all", b"RIFF\x00\x00\x00\x00WAVEfmt "])
def test_bytes_that_are_not_audio_are_bad_input(
    data: bytes, whisper: dict[tuple[str, str], WhisperRuntime]
) -> None:
    with pytest.raises(BadInput, match="cannot be decoded"):
        whisper[(WHISPER_TINY_EN, "cpu-int8")].transcribe(data, None)


def test_a_missing_whisper_model_says_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(ModelsNotPrepared, match=r"model\.bin"):
        WhisperRuntime(tmp_path, "int8")


# -- a node loads what its class serves -----------------------------------------------------


@pytest.fixture
def built(models_dir: Path) -> Iterator[list[NodeService]]:
    services: list[NodeService] = []
    yield services
    for service in services:
        service.close()


@pytest.fixture
def key(tmp_path: Path) -> Path:
    """The test node's key file."""
    return key_file("test-node", tmp_path)


def _build(built: list[NodeService], models_dir: Path, key: Path, **options: Any) -> NodeService:
    settings = make_settings(models_dir, key_file=key)
    service = build_node(settings, node_id="test-node", **options)
    built.append(service)
    return service


@pytest.mark.parametrize("hw_class", ["auto", "cpu-int8", "cpu-fp32"])
def test_a_node_loads_every_model_its_class_serves(
    hw_class: Any,
    models_dir: Path,
    built: list[NodeService],
    key: Path,
    embedders: dict[str, EmbeddingRuntime],
    speech: dict[str, bytes],
) -> None:
    service = _build(built, models_dir, key, hw_class=hw_class)
    chosen = service.identity.hw_class
    assert chosen == (hw_class if hw_class != "auto" else "cpu-int8")
    names = (EMBED_MODEL, CLASSIFY_MODEL, WHISPER_BASE, WHISPER_TINY_EN)
    assert service.identity.models == names
    assert service.identity.tasks == ("embed", "classify", "transcribe")
    assert set(service.runtimes) == set(names)
    embedder = service.runtimes[EMBED_MODEL]
    classifier = service.runtimes[CLASSIFY_MODEL]
    assert isinstance(embedder, EmbeddingRuntime)
    assert isinstance(classifier, ClassifierRuntime)
    # The class's own variant: the same vectors as that variant loaded directly.
    np.testing.assert_array_equal(embedder.embed(TEXTS[:3]), embedders[chosen].embed(TEXTS[:3]))
    assert classifier.classify(TEXTS[:1], 1)[0].label == "weather"
    for name in (WHISPER_BASE, WHISPER_TINY_EN):
        runtime = service.runtimes[name]
        assert isinstance(runtime, WhisperRuntime)
        assert runtime.compute_type == ("int8" if chosen == "cpu-int8" else "float32")
        assert runtime.device == "cpu"
    transcriber = service.runtimes[WHISPER_TINY_EN]
    assert isinstance(transcriber, WhisperRuntime)
    text, wav = next(iter(speech.items()))
    assert _wer(text, transcriber.transcribe(wav, None).text) <= WER_BOUND


@pytest.mark.parametrize(
    ("models", "tasks"),
    [
        ([WHISPER_TINY_EN], ("transcribe",)),
        ([EMBED_MODEL, WHISPER_BASE], ("embed", "transcribe")),
        # The head loads its base model for itself without serving embeddings.
        ([CLASSIFY_MODEL], ("classify",)),
    ],
)
def test_a_node_can_serve_some_models_only(
    models: list[str],
    tasks: tuple[str, ...],
    models_dir: Path,
    built: list[NodeService],
    key: Path,
) -> None:
    service = _build(built, models_dir, key, models=models)
    assert set(service.identity.models) == set(models) == set(service.runtimes)
    if EMBED_MODEL in models or CLASSIFY_MODEL in models:
        # Per-token graphs are another build than the dynamic ones of the same name.
        build = service.identity.builds[CLASSIFY_MODEL if CLASSIFY_MODEL in models else EMBED_MODEL]
        assert build.endswith("-tok"), build
    assert service.identity.tasks == tasks
    assert all(TASK_OF[m] in tasks for m in models)
    if CLASSIFY_MODEL in models:
        classifier = service.runtimes[CLASSIFY_MODEL]
        assert isinstance(classifier, ClassifierRuntime)
        assert classifier.classify(["Set an alarm for 7 am"], 2)[0].label == "alarm"


def test_unknown_models_are_bad_input(models_dir: Path) -> None:
    with pytest.raises(BadInput, match="whisper-large") as info:
        build_node(make_settings(models_dir), models=["whisper-large", EMBED_MODEL])
    assert all(name in str(info.value) for name in TASK_OF)


@pytest.mark.skipif(cuda_available(), reason="this machine has a usable CUDA GPU")
def test_a_cuda_class_without_a_gpu_is_bad_input(models_dir: Path) -> None:
    with pytest.raises(BadInput, match="CUDA GPU"):
        build_node(make_settings(models_dir), hw_class="cuda-fp16")


def test_a_damaged_model_stops_the_node(models_dir: Path, tmp_path: Path) -> None:
    # A models directory of links to the real files, but for one damaged copy.
    manifest = load_manifest(models_dir)
    shutil.copy(models_dir / MANIFEST_NAME, tmp_path / MANIFEST_NAME)
    for path in {f.path for v in manifest.variants for f in v.files}:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).symlink_to(models_dir / path)
    tokenizer = (
        tmp_path / manifest.variant_for(WHISPER_TINY_EN, "cpu-fp32").directory / "tokenizer.json"
    )
    content = tokenizer.read_bytes()
    tokenizer.unlink()
    tokenizer.write_bytes(content.replace(b"<|endoftext|>", b"<|endoftexT|>", 1))

    with pytest.raises(ModelsNotPrepared, match=r"whisper-tiny\.en fp32: .*tokenizer\.json"):
        build_node(make_settings(tmp_path), hw_class="cpu-fp32")


def test_a_class_that_lacks_a_wanted_model_is_bad_input(models_dir: Path) -> None:
    # Only Whisper has variants for cuda-int8; the check comes before any GPU is needed.
    with pytest.raises(BadInput, match=r"cuda-int8 has no prepared variant of all-MiniLM-L6-v2"):
        build_node(make_settings(models_dir), hw_class="cuda-int8", models=[EMBED_MODEL])


def test_a_node_without_its_key_stops_before_loading_a_model(models_dir: Path) -> None:
    with pytest.raises(SetupIncomplete, match=r"--key FILE, set CORTENSOR_KEY_FILE"):
        build_node(make_settings(models_dir, key_file=None), node_id="test-node")
