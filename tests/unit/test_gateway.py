"""The gateway's HTTP surface on an in-memory network: every shape, status and header a
caller sees, fast. The network is a twin at the SDK boundary (what `Client` answers:
a verdict, or the error it raises), so that each answer (verified, rejected, failed,
inconclusive, Busy, no verdict in time) is made on purpose; tests/e2e/test_gateway.py
runs the same calls against a live fleet through the `openai` package, and
tests/integration/test_gateway_busy.py fills a real router queue."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cortensor.client import VerdictTimeout
from cortensor.errors import BadSetting, BrokerUnavailable, Busy
from cortensor.gateway.app import create_app
from cortensor.gateway.keys import ApiKeys, api_keys_path, key_digest
from cortensor.gateway.wire import MAX_BODY_BYTES
from cortensor.schemas import (
    MAX_AUDIO_BYTES,
    Classification,
    JobReceipt,
    JobRequest,
    JobStatus,
    LabelScore,
    Segment,
    Transcript,
    Verdict,
)
from cortensor.settings import Settings

NS = "gw-unit"
ALICE, MALLORY = "key-of-alice", "key-of-mallory"


class Network:
    """The SDK as the gateway sees it, answering from memory."""

    def __init__(self) -> None:
        self.runs: list[tuple[JobRequest, float | None, str | None]] = []
        self.status: JobStatus = "verified"
        self.reason = ""
        self.raises: Exception | None = None
        self.verdicts: dict[tuple[str, UUID], Verdict] = {}
        self.receipts: set[tuple[str, UUID]] = set()

    async def run(
        self, job: JobRequest, timeout_s: float | None = None, *, owner: str | None = None
    ) -> Verdict:
        assert owner is not None, "the gateway always names the owner"
        self.runs.append((job, timeout_s, owner))
        if self.raises is not None:
            raise self.raises
        verdict = Verdict(
            job_id=job.job_id,
            owner=owner,
            status=self.status,
            reason=self.reason,
            task=job.task,
            model=job.model,
            replicas=3,
            agreeing=["node-1", "node-2"] if self.status == "verified" else [],
            disagreeing=["node-3"] if self.status == "verified" else [],
            **(_output(job) if self.status == "verified" else {}),
        )
        self.verdicts[(owner, job.job_id)] = verdict
        return verdict

    async def result(self, job_id: UUID, *, owner: str | None = None) -> Verdict | None:
        return self.verdicts.get((owner or "", job_id))

    async def receipt(self, job_id: UUID, *, owner: str | None = None) -> JobReceipt | None:
        found = (owner or "", job_id) in self.receipts
        return JobReceipt(job_id=job_id, owner=owner or "") if found else None

    async def find_owner(self, job_id: UUID) -> str | None:
        return next((o for o, j in [*self.verdicts, *self.receipts] if j == job_id), None)


def _output(job: JobRequest) -> dict[str, Any]:
    if job.task == "embed":
        return {"embeddings": [[0.25 + i] * 384 for i in range(len(job.inputs))]}
    if job.task == "classify":
        top = [LabelScore(label="timer", score=0.75), LabelScore(label="music", score=0.125)]
        return {"classes": [Classification(label="timer", score=0.75, top=top)] * len(job.inputs)}
    segment = Segment(start=0.0, end=1.5, text="hello world")
    return {
        "transcript": Transcript(
            text="hello world", language="en", duration_s=1.5, segments=[segment]
        )
    }


@pytest.fixture
def net() -> Network:
    return Network()


@pytest.fixture
def http(tmp_path: Path, net: Network) -> Iterator[TestClient]:
    registry = {
        f"{NS}.client.alice": key_digest(ALICE),
        f"{NS}.client.mallory": key_digest(MALLORY),
    }
    registry["other-ns.client.eve"] = key_digest("key-of-eve")
    api_keys_path(tmp_path).write_text(json.dumps(registry))
    settings = Settings(principal_kind="gateway", principal="gw", namespace=NS, state_dir=tmp_path)
    app = create_app(settings, connect=lambda _: contextlib.nullcontext(net))
    with TestClient(app, headers={"authorization": f"Bearer {ALICE}"}) as client:
        yield client


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_every_call_needs_a_key_the_network_issued(http: TestClient) -> None:
    for headers in (
        {"authorization": ""},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {ALICE}"},
        {"authorization": "Bearer key-of-eve"},  # a client of another namespace
    ):
        response = http.get("/v1/models", headers=headers)
        error = _error(response, 401)
        assert error["code"] in ("missing_api_key", "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert http.get("/health", headers={"authorization": ""}).json() == {"status": "ok"}


def test_a_revoked_key_is_refused_from_the_next_call(http: TestClient, tmp_path: Path) -> None:
    assert http.get("/v1/models").status_code == 200
    path = api_keys_path(tmp_path)
    registry = json.loads(path.read_text())
    del registry[f"{NS}.client.alice"]
    tmp = path.with_name("new")
    tmp.write_text(json.dumps(registry))
    os.replace(tmp, path)  # as `cortensor credentials revoke` writes it
    _error(http.get("/v1/models"), 401)


def test_models_are_the_catalogs(http: TestClient) -> None:
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    ids = {m["id"]: m["cortensor"]["task"] for m in body["data"]}
    assert ids == {
        "all-MiniLM-L6-v2": "embed",
        "rag-intent-classifier": "classify",
        "whisper-base": "transcribe",
        "whisper-tiny.en": "transcribe",
        "smollm2-135m-instruct": "generate",
    }
    assert http.get("/v1/models/whisper-base").json()["owned_by"] == "cortensor"
    assert _error(http.get("/v1/models/gpt-4"), 404)["code"] == "model_not_found"


def test_embeddings_as_openai_answers_them_with_their_verification(
    http: TestClient, net: Network
) -> None:
    response = http.post(
        "/v1/embeddings",
        json={"input": ["one text", "two more texts"], "model": "all-MiniLM-L6-v2"},
        headers={"x-cortensor-redundancy": "3", "x-cortensor-deadline-s": "12.5"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert {d["object"] for d in body["data"]} == {"embedding"}
    assert body["data"][1]["embedding"] == [1.25] * 384
    assert body["model"] == "all-MiniLM-L6-v2"
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    job, wait_s, owner = net.runs[-1]
    assert (owner, job.task, job.inputs, job.redundancy) == ("alice", "embed", body_inputs(), 3)
    assert job.deadline_s == 12.5
    assert wait_s == 12.5 + Settings().gateway_wait_s
    verification = body["cortensor"]
    assert verification["job_id"] == str(job.job_id)
    assert verification["agreeing"] == ["node-1", "node-2"]
    assert (verification["status"], verification["replicas"], verification["revision"]) == (
        "verified",
        3,
        0,
    )
    headers = response.headers
    assert headers["x-cortensor-job-id"] == str(job.job_id)
    assert headers["x-cortensor-status"] == "verified"
    assert headers["x-cortensor-replicas"] == "3"
    assert headers["x-cortensor-agreeing"] == "node-1,node-2"
    assert headers["x-cortensor-revision"] == "0"


def body_inputs() -> list[str]:
    return ["one text", "two more texts"]


def test_embeddings_in_base64_are_little_endian_float32(http: TestClient) -> None:
    body = http.post(
        "/v1/embeddings",
        json={"input": "one", "model": "all-MiniLM-L6-v2", "encoding_format": "base64"},
    ).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [0.25] * 384


@pytest.mark.parametrize(
    ("request_body", "headers", "param", "says"),
    [
        ({"input": ["fine", "  "], "model": "all-MiniLM-L6-v2"}, {}, "input", "blank"),
        ({"input": [], "model": "all-MiniLM-L6-v2"}, {}, "input", "at least one text"),
        ({"input": "x", "model": "text-embedding-3-small"}, {}, "model", "unknown model"),
        ({"input": "nul \x00", "model": "all-MiniLM-L6-v2"}, {}, "input", "NUL"),
        ({"input": "x", "model": "all-MiniLM-L6-v2", "temperature": 1}, {}, "temperature", ""),
        ({"input": "x", "model": "all-MiniLM-L6-v2", "dimensions": 1536}, {}, "dimensions", ""),
        ({"input": [1, 2, 3], "model": "all-MiniLM-L6-v2"}, {}, "input", ""),
        ({"model": "all-MiniLM-L6-v2"}, {}, "input", "required"),
        (
            {"input": "x", "model": "all-MiniLM-L6-v2"},
            {"x-cortensor-redundancy": "9"},
            "x-cortensor-redundancy",
            "from 1 to 7",
        ),
        (
            {"input": "x", "model": "all-MiniLM-L6-v2"},
            {"x-cortensor-deadline-s": "soon"},
            "x-cortensor-deadline-s",
            "",
        ),
        (
            {"input": "x", "model": "all-MiniLM-L6-v2"},
            {"x-cortensor-hw-class": "tpu"},
            "x-cortensor-hw-class",
            "",
        ),
    ],
)
def test_bad_input_is_400_naming_the_field(
    http: TestClient,
    net: Network,
    request_body: dict[str, Any],
    headers: dict[str, str],
    param: str,
    says: str,
) -> None:
    error = _error(http.post("/v1/embeddings", json=request_body, headers=headers), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(param), error["message"]
    assert says in error["message"]
    assert net.runs == [], "nothing was submitted"


def test_classifications_give_each_input_its_classes(http: TestClient, net: Network) -> None:
    response = http.post(
        "/v1/classifications",
        json={"input": ["Set a timer", "Play music"], "model": "rag-intent-classifier", "top_k": 2},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(d["index"], d["label"], d["score"]) for d in body["data"]] == [
        (0, "timer", 0.75),
        (1, "timer", 0.75),
    ]
    assert body["data"][0]["classes"] == [
        {"label": "timer", "score": 0.75},
        {"label": "music", "score": 0.125},
    ]
    assert net.runs[-1][0].top_k == 2
    assert body["cortensor"]["status"] == "verified"
    error = _error(
        http.post("/v1/classifications", json={"input": "x", "model": "m", "top_k": 0}), 400
    )
    assert error["param"] == "top_k"


def _upload(http: TestClient, data: dict[str, str], audio: bytes = b"RIFF fake wav") -> Any:
    return http.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)}, data=data)


def test_transcriptions_in_each_format(http: TestClient, net: Network) -> None:
    as_json = _upload(http, {"model": "whisper-base", "language": "en"})
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["text"] == "hello world"
    assert as_json.json()["cortensor"]["agreeing"] == ["node-1", "node-2"]
    job = net.runs[-1][0]
    assert job.deadline_s == 300.0, "minutes of audio take more than a text's 30 s"
    assert (job.task, job.model, job.language, job.audio_bytes()) == (
        "transcribe",
        "whisper-base",
        "en",
        b"RIFF fake wav",
    )
    text = _upload(http, {"model": "whisper-base", "response_format": "text"})
    assert text.text == "hello world"
    assert text.headers["content-type"].startswith("text/plain")
    assert text.headers["x-cortensor-status"] == "verified"
    verbose = _upload(http, {"model": "whisper-base", "response_format": "verbose_json"}).json()
    assert (verbose["language"], verbose["duration"]) == ("en", 1.5)
    assert verbose["segments"] == [{"id": 0, "start": 0.0, "end": 1.5, "text": "hello world"}]


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"model": "whisper-base", "response_format": "srt"}, "response_format"),
        ({"model": "whisper-base", "prompt": "hint"}, "prompt"),
        ({"model": "whisper-1"}, "model"),
        ({}, "model"),
        ({"model": "whisper-tiny.en", "language": "de"}, "language"),
    ],
)
def test_a_bad_transcription_is_400_naming_the_field(
    http: TestClient, data: dict[str, str], param: str
) -> None:
    assert _error(_upload(http, data), 400)["param"] == param


def test_a_transcription_without_a_file_names_it(http: TestClient) -> None:
    response = http.post("/v1/audio/transcriptions", data={"model": "whisper-base"})
    assert _error(response, 400)["param"] == "file"


def test_uploads_and_bodies_over_the_limits_are_413(http: TestClient, net: Network) -> None:
    error = _error(_upload(http, {"model": "whisper-base"}, b"\0" * (MAX_AUDIO_BYTES + 1)), 413)
    assert error["param"] == "file"
    assert str(MAX_AUDIO_BYTES) in error["message"]
    huge = json.dumps({"input": "x" * MAX_BODY_BYTES, "model": "all-MiniLM-L6-v2"})
    response = http.post(
        "/v1/embeddings", content=huge, headers={"content-type": "application/json"}
    )
    assert _error(response, 413)["code"] == "request_too_large"
    assert net.runs == []


@pytest.mark.parametrize(
    ("status", "reason", "http_status", "code", "param"),
    [
        ("rejected", "inputs.0: holds a NUL character", 400, "rejected", "input"),
        ("rejected", "audio: cannot be decoded", 400, "rejected", "file"),
        ("failed", "no eligible nodes before the deadline: none serve it", 504, "job_failed", None),
        ("inconclusive", "no strict majority among 3 replicas", 502, "inconclusive", None),
    ],
)
def test_a_verdict_other_than_verified_is_refused_with_its_verification(
    http: TestClient,
    net: Network,
    status: JobStatus,
    reason: str,
    http_status: int,
    code: str,
    param: str | None,
) -> None:
    net.status, net.reason = status, reason
    if param == "file":
        response = _upload(http, {"model": "whisper-base"})
    else:
        response = http.post("/v1/embeddings", json={"input": "x", "model": "all-MiniLM-L6-v2"})
    error = _error(response, http_status)
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"].endswith(reason.split(":", 1)[-1])
    job = net.runs[-1][0]
    assert response.json()["cortensor"]["job_id"] == str(job.job_id)
    assert response.json()["cortensor"]["status"] == status
    assert response.headers["x-cortensor-status"] == status


@pytest.mark.parametrize(
    ("raised", "http_status", "code"),
    [
        # The SDK raises Busy when RabbitMQ refused the job (the router's queue is full);
        # tests/integration/test_gateway_busy.py makes a real queue refuse one.
        (Busy("the network is busy"), 503, "network_busy"),
        (VerdictTimeout("no verdict within 40.5s"), 504, "no_verdict"),
        (BrokerUnavailable("cannot reach RabbitMQ"), 503, "broker_unavailable"),
        (BadSetting("RabbitMQ refused to let gw publish"), 500, "gateway_misconfigured"),
    ],
)
def test_what_the_sdk_raises_is_answered_in_openai_shape(
    http: TestClient, net: Network, raised: Exception, http_status: int, code: str
) -> None:
    net.raises = raised
    response = http.post("/v1/embeddings", json={"input": "x", "model": "all-MiniLM-L6-v2"})
    error = _error(response, http_status)
    assert error["code"] == code
    assert error["message"] == str(raised)
    job = net.runs[-1][0]
    assert response.headers["x-cortensor-job-id"] == str(job.job_id)
    if http_status == 503:
        assert response.headers["retry-after"] == "1"


def test_a_client_sees_its_own_jobs_only(http: TestClient, net: Network) -> None:
    done = http.post("/v1/embeddings", json={"input": "x", "model": "all-MiniLM-L6-v2"})
    job_id = done.json()["cortensor"]["job_id"]
    own = http.get(f"/v1/jobs/{job_id}")
    assert own.status_code == 200
    assert own.json()["status"] == "verified"
    assert own.json()["verdict"]["embeddings"] == [[0.25] * 384]
    assert own.headers["x-cortensor-job-id"] == job_id
    theirs = http.get(f"/v1/jobs/{job_id}", headers={"authorization": f"Bearer {MALLORY}"})
    assert _error(theirs, 403)["code"] == "not_your_job"
    pending = uuid4()
    net.receipts.add(("alice", pending))
    undecided = http.get(f"/v1/jobs/{pending}")
    assert undecided.json() == {
        "object": "job",
        "id": str(pending),
        "status": "pending",
        "verdict": None,
    }
    assert undecided.headers["x-cortensor-status"] == "pending"
    mallorys = http.get(f"/v1/jobs/{pending}", headers={"authorization": f"Bearer {MALLORY}"})
    _error(mallorys, 403)
    assert _error(http.get(f"/v1/jobs/{uuid4()}"), 404)["code"] == "unknown_job"
    assert _error(http.get("/v1/jobs/not-a-uuid"), 400)["param"] == "job_id"


def test_unknown_routes_answer_in_openai_shape(http: TestClient) -> None:
    assert _error(http.get("/v1/nothing"), 404)["code"] == "not_found"
    assert _error(http.get("/v1/embeddings"), 405)["code"] == "method_not_allowed"


def test_the_gateway_runs_only_on_a_gateways_credentials(tmp_path: Path) -> None:
    client = Settings(principal_kind="client", principal="alice", state_dir=tmp_path)
    with pytest.raises(BadSetting, match="gateway's credentials"):
        create_app(client)


def test_keys_are_read_again_when_the_registry_changes(tmp_path: Path) -> None:
    path = api_keys_path(tmp_path)
    keys = ApiKeys(path, NS)
    assert keys.owner_of(ALICE) is None  # no registry yet
    path.write_text(json.dumps({f"{NS}.client.alice": key_digest(ALICE)}))
    assert keys.owner_of(ALICE) == "alice"
    path.write_text(json.dumps({f"{NS}.client.bob": key_digest(ALICE), f"{NS}.node.x": "y"}))
    assert keys.owner_of(ALICE) == "bob"


def test_calls_are_counted_by_route_template_and_status(http: TestClient) -> None:
    done = http.post("/v1/embeddings", json={"input": "x", "model": "all-MiniLM-L6-v2"})
    job_id = done.json()["cortensor"]["job_id"]
    http.get(f"/v1/jobs/{job_id}", headers={"authorization": f"Bearer {MALLORY}"})
    http.get("/v1/nothing")
    text = http.get("/metrics", headers={"authorization": ""}).text
    for sample in (
        'cortensor_gateway_calls_total{route="/v1/embeddings",status="200"}',
        'cortensor_gateway_calls_total{route="/v1/jobs/{job_id}",status="403"}',
        'cortensor_gateway_calls_total{route="unmatched",status="404"}',
        'cortensor_gateway_call_seconds_count{route="/v1/embeddings"}',
    ):
        assert sample in text, sample
    assert job_id not in text
