"""The gateway in front of a live fleet, called as OpenAI's own `openai` package calls it.

One fleet for the module, started from the Procfile with its gateway (on issued
credentials, as an operator runs it): embeddings compared with the model run directly,
espeak-ng speech transcribed within the WER target, classifications compared with the
classifier run directly, the models list, job lookups, and the refusals a caller meets
(401, 403, 400 naming the field, 404, 413, 504). A full router queue (503) is in
tests/integration/test_gateway_busy.py, on a namespace with no router.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from cortensor.catalog import GENERATE_MODEL, MODELS
from cortensor.inference.manifest import load_manifest
from cortensor.inference.runtimes.classifier import ClassifierRuntime
from cortensor.inference.runtimes.embedding import EmbeddingRuntime
from cortensor.inference.runtimes.generator import GeneratorRuntime
from cortensor.paths import checkout_path
from cortensor.protocol.comparators.transcribe import word_error_rate
from cortensor.schemas import MAX_AUDIO_BYTES, ChatTurn, Generation
from cortensor.settings import Settings
from cortensor.tools import credentials
from cortensor.tools.speech import SHORT, speak
from tests.e2e.conftest import running_fleet

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.nats,
    pytest.mark.postgres,
    pytest.mark.models,
    # The first test to run also starts the fleet.
    pytest.mark.timeout(420),
]

ROOM = {"CORTENSOR_AUDIO_TIMEOUT_FACTOR": "4", "CORTENSOR_ASSIGNMENT_TIMEOUT_S": "20"}
"""Three nodes share two cores here, with other test runs beside them: their admission
probes (transcriptions among them) get room, so that a busy machine does not fail them."""

TEXTS = [
    "The cat sat on the mat.",
    "A decentralized network checks every answer on several nodes.",
    "Dogs bark at the postman every morning.",
]
QUESTIONS = [
    "Set a timer for ten minutes.",
    "Play some relaxing music.",
    "What is the weather like in Paris tomorrow?",
]


@dataclass(frozen=True)
class Served:
    """The fleet behind its gateway, and the keys of two clients."""

    settings: Settings
    nodes: tuple[str, ...]
    url: str
    key: str
    """The fleet's client's API key (the client named `client`)."""
    other_key: str
    """Another client's (mallory's)."""

    @contextmanager
    def openai(self, key: str | None = None) -> Iterator[openai.OpenAI]:
        """OpenAI's client on the gateway: no retries, so that each refusal is seen."""
        with openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=key or self.key, max_retries=0, timeout=300
        ) as client:
            yield client

    def get(self, path: str, key: str | None) -> httpx.Response:
        headers = {} if key is None else {"authorization": f"Bearer {key}"}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _healthy(url: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway at {url} did not come up in {within_s} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = _free_port()
    log_dir = tmp_path_factory.mktemp("gateway-fleet")
    env = {**ROOM, "CORTENSOR_GATEWAY_PORT": str(port)}
    with running_fleet(
        models_dir, log_dir, nodes=3, extra_nodes=[], env=env, gateways=1, generators=2
    ) as (settings, fleet):
        other = credentials.issue(settings, "client", "mallory", log_dir / "mallory.json")
        try:
            url = f"http://127.0.0.1:{port}"
            _healthy(url)
            yield Served(
                settings=settings,
                nodes=tuple(fleet.live_nodes()),
                url=url,
                key=json.loads((log_dir / "client.json").read_text())["api_key"],
                other_key=json.loads(other.read_text())["api_key"],
            )
        finally:
            credentials.revoke(settings, "client", "mallory")


def _checked(verification: dict[str, Any], served: Served) -> None:
    assert verification["status"] == "verified", verification["reason"]
    assert verification["replicas"] >= 2
    assert len(verification["agreeing"]) >= 2
    assert set(verification["agreeing"]) <= set(served.nodes)


def test_embeddings_are_the_models_own(served: Served) -> None:
    with served.openai() as client:
        raw = client.embeddings.with_raw_response.create(
            input=TEXTS,
            model="all-MiniLM-L6-v2",
            extra_headers={"x-cortensor-redundancy": "3"},
        )
    response = raw.parse()
    assert [d.index for d in response.data] == [0, 1, 2]
    assert response.model == "all-MiniLM-L6-v2"
    verification = response.model_extra["cortensor"]  # type: ignore[index]
    _checked(verification, served)  # decided once 2 of its 3 replicas agreed, or on all 3
    assert raw.headers["x-cortensor-job-id"] == verification["job_id"]
    assert raw.headers["x-cortensor-status"] == "verified"
    assert raw.headers["x-cortensor-agreeing"].split(",") == verification["agreeing"]

    reference = EmbeddingRuntime.from_manifest(
        served.settings.models_dir,
        load_manifest(served.settings.models_dir).variant_for("all-MiniLM-L6-v2", "cpu-fp32"),
    ).embed(TEXTS)
    got = np.asarray([d.embedding for d in response.data], dtype=np.float32)
    assert got.shape == reference.shape == (3, 384)
    cosines = np.sum(got * reference, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert float(cosines.min()) >= 0.95, cosines

    # The job, looked up by its owner; nobody else may, and nobody without a key.
    job_id = verification["job_id"]
    own = served.get(f"/v1/jobs/{job_id}", served.key)
    assert own.status_code == 200, own.text
    assert own.json()["status"] == "verified"
    assert own.json()["verdict"]["owner"] == "client"
    assert np.allclose(own.json()["verdict"]["embeddings"], got, atol=1e-6)
    assert own.headers["x-cortensor-revision"] == "0"
    theirs = served.get(f"/v1/jobs/{job_id}", served.other_key)
    assert theirs.status_code == 403, theirs.text
    assert theirs.json()["error"]["code"] == "not_your_job"
    assert served.get(f"/v1/jobs/{job_id}", None).status_code == 401
    unknown = served.get(f"/v1/jobs/{uuid.uuid4()}", served.key)
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["code"] == "unknown_job"


def test_speech_is_transcribed_within_the_wer_target(served: Served, tmp_path: Path) -> None:
    spoken = " ".join(SHORT)
    audio = speak(spoken, tmp_path / "short.wav")
    with served.openai() as client:
        raw = client.audio.transcriptions.with_raw_response.create(
            file=("short.wav", audio.read_bytes()),
            model="whisper-base",
            language="en",
            extra_headers={"x-cortensor-deadline-s": "240"},
        )
    transcription = raw.parse()
    assert word_error_rate(spoken, transcription.text) <= 0.15, transcription.text
    _checked(transcription.model_extra["cortensor"], served)  # type: ignore[index]
    assert raw.headers["x-cortensor-status"] == "verified"


def test_classifications_are_the_classifiers_own(served: Served) -> None:
    with served.openai() as client:
        body = client.post(
            "/classifications",
            body={"model": "rag-intent-classifier", "input": QUESTIONS, "top_k": 3},
            cast_to=object,
        )
    assert isinstance(body, dict)
    _checked(body["cortensor"], served)
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(
        len(d["classes"]) == 3 and d["classes"][0]["label"] == d["label"] for d in body["data"]
    )
    models = served.settings.models_dir
    manifest = load_manifest(models)
    embedder = EmbeddingRuntime.from_manifest(
        models, manifest.variant_for("all-MiniLM-L6-v2", "cpu-int8")
    )
    head = manifest.variant_for("rag-intent-classifier", "cpu-int8")
    direct = ClassifierRuntime(embedder, models / head.entry).classify(QUESTIONS, 3)
    assert [d["label"] for d in body["data"]] == [c.label for c in direct]


def test_the_models_are_the_catalogs(served: Served) -> None:
    with served.openai() as client:
        listed = {m.id for m in client.models.list()}
        assert listed == {m for names in MODELS.values() for m in names}
        assert client.models.retrieve("whisper-base").owned_by == "cortensor"


CHAT = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]
CHAT_TOKENS = 24


def _generator_nodes(served: Served) -> set[str]:
    return {n for n in served.nodes if n.startswith("generator-")}


def _direct_answer(served: Served) -> Generation:
    """The int8 graph's own greedy answer: the generator nodes run the same build."""
    models_dir = served.settings.models_dir
    variant = load_manifest(models_dir).variant_for(GENERATE_MODEL, "cpu-int8")
    runtime = GeneratorRuntime.from_manifest(models_dir, variant)
    turns = [ChatTurn.model_validate(turn) for turn in CHAT]
    return runtime.generate([turns], CHAT_TOKENS)[0]


def test_a_chat_completion_is_the_answer_several_nodes_agreed_on(served: Served) -> None:
    direct = _direct_answer(served)
    redundancy = {"x-cortensor-redundancy": "2"}
    with served.openai() as client:
        raw = client.chat.completions.with_raw_response.create(
            model=GENERATE_MODEL,
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=CHAT_TOKENS,
            extra_headers=redundancy,
        )
        completion = raw.parse()
        stream = client.chat.completions.create(
            model=GENERATE_MODEL,
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=CHAT_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=redundancy,
        )
        chunks = list(stream)

    verification = completion.model_extra["cortensor"]  # type: ignore[index]
    _checked(verification, served)
    assert set(verification["agreeing"]) <= _generator_nodes(served)
    assert raw.headers["x-cortensor-job-id"] == verification["job_id"]
    assert completion.id == f"chatcmpl-{verification['job_id']}"
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == direct.text, "the same build decodes the same tokens"
    assert choice.finish_reason == direct.finish_reason
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(direct.tokens)

    # Streamed: the same verified answer, word by word, the verification in the last
    # chunk with a choice, then the usage.
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct.text
    ends = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(ends) == 1
    assert ends[0].choices[0].finish_reason == direct.finish_reason
    streamed = ends[0].model_extra["cortensor"]  # type: ignore[index]
    _checked(streamed, served)
    assert streamed["job_id"] != verification["job_id"], "a job of its own"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(direct.tokens)
    assert len({c.id for c in chunks}) == 1


def test_chat_refusals_name_the_field(served: Served) -> None:
    with served.openai() as client:
        for fields, param in (
            ({"temperature": 0.7}, "temperature"),
            ({"n": 2}, "n"),
            ({"max_tokens": 100_000}, "max_tokens"),
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(
                    model=GENERATE_MODEL,
                    messages=CHAT,  # type: ignore[arg-type]
                    **fields,  # type: ignore[arg-type]
                )
            assert refused.value.param == param, refused.value.message
        with pytest.raises(openai.BadRequestError) as last:
            client.chat.completions.create(
                model=GENERATE_MODEL,
                messages=[*CHAT, {"role": "assistant", "content": "Paris."}],  # type: ignore[list-item]
            )
        assert last.value.param == "messages"
        assert "user" in last.value.message
        with pytest.raises(openai.BadRequestError) as model:
            client.chat.completions.create(
                model="gpt-4o",
                messages=CHAT,  # type: ignore[arg-type]
            )
        assert model.value.param == "model"


def test_refusals_are_openais_errors_with_their_status(served: Served) -> None:
    with served.openai("not-a-key") as stranger, pytest.raises(openai.AuthenticationError) as no:
        stranger.embeddings.create(input="x", model="all-MiniLM-L6-v2")
    assert no.value.code == "invalid_api_key"
    with served.openai() as client:
        _refusals(client)


def _refusals(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as blank:
        client.embeddings.create(input=["fine", "   "], model="all-MiniLM-L6-v2")
    assert blank.value.param == "input"
    assert "blank" in blank.value.message
    with pytest.raises(openai.BadRequestError) as model:
        client.embeddings.create(input="x", model="text-embedding-3-small")
    assert model.value.param == "model"

    with pytest.raises(openai.APIStatusError) as too_large:
        client.audio.transcriptions.create(
            file=("big.wav", b"\0" * (MAX_AUDIO_BYTES + 1)), model="whisper-base"
        )
    assert too_large.value.status_code == 413
    assert too_large.value.param == "file"

    # No node of the class asked for: the job fails at its deadline.
    with pytest.raises(openai.InternalServerError) as no_nodes:
        client.embeddings.create(
            input="x",
            model="all-MiniLM-L6-v2",
            extra_headers={"x-cortensor-hw-class": "cuda-fp16", "x-cortensor-deadline-s": "2"},
        )
    assert no_nodes.value.status_code == 504
    assert no_nodes.value.code == "job_failed"
    assert no_nodes.value.response.headers["x-cortensor-status"] == "failed"
    # A deadline too short for any node: no verified answer either.
    with pytest.raises(openai.InternalServerError) as tiny:
        client.embeddings.create(
            input="x", model="all-MiniLM-L6-v2", extra_headers={"x-cortensor-deadline-s": "0.001"}
        )
    assert tiny.value.status_code == 504


def _readme_blocks() -> tuple[str, str]:
    """The README's gateway examples: its curl block and its Python block."""
    text = checkout_path("README.md").read_text()
    section = text[text.index("### Over HTTP: the gateway") :]
    curl = section.index("```sh\ncurl ") + len("```sh\n")
    python = section.index("```python\n") + len("```python\n")
    return (
        section[curl : section.index("```", curl)],
        section[python : section.index("```", python)],
    )


def test_the_readme_examples_run(served: Served, tmp_path: Path) -> None:
    curl, python = _readme_blocks()
    speak(" ".join(SHORT), tmp_path / "talk.flac", fmt="flac")
    with served.openai() as client:
        job = client.embeddings.create(input="Hello", model="all-MiniLM-L6-v2")
    env = {
        **os.environ,
        "GATEWAY": served.url,
        "KEY": served.key,
        "JOB": job.model_extra["cortensor"]["job_id"],  # type: ignore[index]
    }
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", curl],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    out = ran.stdout
    for expected in ('"embedding"', '"classes"', '"text"', '"whisper-base"', '"status":"verified"'):
        assert expected in out, (expected, out[-2000:])
    assert "x-cortensor-status: verified" in out.lower()
    assert '"error"' not in out, out[out.find('"error"') - 300 :][:1000]
    ran = subprocess.run(
        [sys.executable, "-c", python],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0].startswith("384 ["), lines
    assert word_error_rate(" ".join(SHORT), lines[1]) <= 0.15, lines
    _label, score = lines[2].split()
    assert 0.0 < float(score) <= 1.0, lines
    assert set(ast.literal_eval(lines[3])) == {m for names in MODELS.values() for m in names}
