"""Messages: frozen, versioned, JSON on the wire, and their published JSON Schemas."""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cortensor.cli import SCHEMAS_DIR, app
from cortensor.protocol.intake import Rejected, explain, read_job
from cortensor.schemas import (
    MAX_AUDIO_BYTES,
    MESSAGES,
    OUTPUT_FIELD,
    SCHEMA_VERSION,
    Assignment,
    InferenceResult,
    JobReceipt,
    JobRequest,
    Message,
    NodeHeartbeat,
    Verdict,
    json_schemas,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def samples() -> list[Message]:
    job_id = uuid.uuid4()
    assignment_id = uuid.uuid4()
    return [
        JobRequest(job_id=job_id, inputs=["a", "b"], redundancy=5, hw_class="int8"),
        Assignment(
            assignment_id=assignment_id,
            job_id=job_id,
            node_id="host-node-1",
            task="embed",
            model="all-MiniLM-L6-v2",
            inputs=["a", "b"],
            hw_class="cpu-int8",
            deadline_at=NOW + timedelta(seconds=30),
            attempt=2,
        ),
        InferenceResult(
            assignment_id=assignment_id,
            job_id=job_id,
            node_id="host-node-1",
            model="all-MiniLM-L6-v2",
            hw_class="cpu-int8",
            precision="int8",
            embeddings=[[0.25, -0.5, 1e-7], [1.0, 0.0, -0.0]],
            elapsed_ms=12.5,
        ),
        Verdict(
            job_id=job_id,
            status="verified",
            reason="2 of 3 replicas agree",
            model="all-MiniLM-L6-v2",
            embeddings=[[0.25, -0.5, 1e-7]],
            canonical_result_id=uuid.uuid4(),
            replicas=3,
            agreeing=["a", "b"],
            disagreeing=["c"],
            timed_out=["d"],
        ),
        NodeHeartbeat(
            node_id="host-node-1",
            hw_class="cpu-fp32",
            precision="fp32",
            tasks=["embed"],
            models=["all-MiniLM-L6-v2"],
            capacity=4,
            inflight=1,
            processed=10,
            status="draining",
            started_at=NOW,
        ),
        JobReceipt(job_id=job_id, owner="alice", created_at=NOW),
    ]


def test_samples_cover_every_message() -> None:
    assert sorted(type(m).__name__ for m in samples()) == sorted(MESSAGES)
    assert len(MESSAGES) == 6


@pytest.mark.parametrize("message", samples(), ids=lambda m: type(m).__name__)
def test_json_round_trip(message: Message) -> None:
    text = message.model_dump_json()
    again = type(message).model_validate_json(text)
    assert again == message
    assert again.model_dump_json() == text
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize("message", samples(), ids=lambda m: type(m).__name__)
def test_messages_are_frozen(message: Message) -> None:
    with pytest.raises(ValidationError, match="frozen"):
        message.schema_version = 2  # type: ignore[misc,assignment]
    with pytest.raises(ValidationError, match="frozen"):
        message.created_at = NOW  # type: ignore[misc]


@pytest.mark.parametrize("cls", MESSAGES.values(), ids=list(MESSAGES))
def test_messages_forbid_unknown_fields(cls: type[Message]) -> None:
    data = json.loads(next(m for m in samples() if type(m) is cls).model_dump_json())
    data["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        cls.model_validate(data)


@pytest.mark.parametrize("cls", MESSAGES.values(), ids=list(MESSAGES))
def test_messages_reject_another_schema_version(cls: type[Message]) -> None:
    data = json.loads(next(m for m in samples() if type(m) is cls).model_dump_json())
    data["schema_version"] = 2
    with pytest.raises(ValidationError, match="schema_version"):
        cls.model_validate(data)


def test_created_at_is_timezone_aware_utc() -> None:
    created = JobRequest(inputs=["x"]).created_at
    assert created.tzinfo is not None
    assert created.utcoffset() == timedelta(0)


def test_job_request_fills_in_the_default_model() -> None:
    assert JobRequest(inputs=["x"]).model == "all-MiniLM-L6-v2"


@pytest.mark.parametrize("node_id", ["bad.id", "-leading-dash", "", "x" * 65, "sp ace"])
def test_node_id_must_be_safe_for_queue_names(node_id: str) -> None:
    beat = samples()[4].model_dump()
    with pytest.raises(ValidationError, match="node_id"):
        NodeHeartbeat.model_validate({**beat, "node_id": node_id})
    assert NodeHeartbeat.model_validate({**beat, "node_id": "A_9-z"}).node_id == "A_9-z"


def test_json_schemas_describe_every_message() -> None:
    schemas = json_schemas()
    assert set(schemas) == {f"{name}.schema.json" for name in MESSAGES}
    job = schemas["JobRequest.schema.json"]
    assert job["additionalProperties"] is False
    # Which of inputs and audio a job needs depends on its task, checked by the model.
    assert {"inputs", "audio", "language", "top_k"} <= set(job["properties"])
    assert set(job["properties"]["task"]["enum"]) == {"embed", "classify", "transcribe", "generate"}
    assert {"messages", "max_tokens"} <= set(job["properties"])


# -- `cortensor schemas write --check` ------------------------------------------------------


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["schemas", "write", *args])
    return result.exit_code, result.output


def test_committed_schemas_are_up_to_date() -> None:
    code, output = invoke("--check")
    assert code == 0, output
    assert "schemas checked" in output


def test_check_passes_on_an_exact_copy(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS_DIR, tmp_path, dirs_exist_ok=True)
    code, output = invoke("--check", "--directory", str(tmp_path))
    assert code == 0, output


def test_check_fails_on_a_modified_schema_and_leaves_it(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS_DIR, tmp_path, dirs_exist_ok=True)
    target = tmp_path / "Verdict.schema.json"
    schema = json.loads(target.read_text())
    schema["title"] = "Something else"
    stale = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    target.write_text(stale)
    code, output = invoke("--check", "--directory", str(tmp_path))
    assert code == 1
    assert "Verdict.schema.json" in output
    assert target.read_text() == stale  # --check never writes


def test_check_fails_on_a_missing_schema(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "JobRequest.schema.json").unlink()
    code, _ = invoke("--check", "--directory", str(tmp_path))
    assert code == 1
    assert not (tmp_path / "JobRequest.schema.json").exists()


def test_write_regenerates_what_check_then_accepts(tmp_path: Path) -> None:
    code, output = invoke("--directory", str(tmp_path))
    assert code == 0, output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(json_schemas())
    for name in json_schemas():
        assert (tmp_path / name).read_text() == (SCHEMAS_DIR / name).read_text()
    assert invoke("--check", "--directory", str(tmp_path))[0] == 0


# -- task-specific validation of a JobRequest -----------------------------------------------

WAV_B64 = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt ").decode("ascii")
EMBED = "all-MiniLM-L6-v2"


def reason_for(request: dict[str, object]) -> str:
    """Why a job is refused, as the router reads it off the wire."""
    body = json.dumps({"job_id": str(uuid.uuid4()), "schema_version": 1, **request}).encode()
    outcome = read_job(body)
    assert isinstance(outcome, Rejected), outcome
    return outcome.reason


@pytest.mark.parametrize(
    ("request_", "field", "says"),
    [
        ({"task": "classify"}, "inputs", "classify jobs need at least one text"),
        ({"task": "embed", "inputs": []}, "inputs", "embed jobs need at least one text"),
        ({"task": "transcribe"}, "audio", "transcribe jobs need the audio file"),
        (
            {"task": "transcribe", "audio": WAV_B64, "inputs": ["hello"]},
            "inputs",
            "transcribe jobs take audio, not texts",
        ),
        ({"task": "embed", "inputs": ["x"], "audio": WAV_B64}, "audio", "take texts in inputs"),
        ({"task": "classify", "inputs": ["x"], "audio": WAV_B64}, "audio", "not audio"),
        ({"task": "transcribe", "audio": "not base64!"}, "audio", "not valid base64"),
        ({"task": "transcribe", "audio": "QUJ"}, "audio", "not valid base64"),
        (
            {"task": "transcribe", "audio": "data:audio/wav;base64," + WAV_B64},
            "audio",
            "not valid base64",
        ),
        ({"task": "transcribe", "audio": ""}, "audio", "audio is empty"),
        (
            {"task": "transcribe", "audio": WAV_B64, "model": "whisper-tiny.en", "language": "fr"},
            "language",
            "whisper-tiny.en transcribes English only",
        ),
        ({"task": "transcribe", "audio": WAV_B64, "language": "French"}, "language", "pattern"),
        ({"task": "classify", "inputs": ["x"], "top_k": 0}, "top_k", "greater than or equal"),
        ({"task": "transcribe", "audio": WAV_B64, "model": EMBED}, "model", "unknown model"),
    ],
)
def test_task_specific_errors_name_the_field(
    request_: dict[str, object], field: str, says: str
) -> None:
    reason = reason_for(request_)

    assert reason.startswith(f"{field}: "), reason
    assert says in reason
    with pytest.raises(ValidationError) as raised:
        JobRequest.model_validate(request_)
    assert [e["loc"] for e in raised.value.errors()] == [(field,)], "one problem, its field"
    assert explain(raised.value) == reason


def test_audio_over_the_limit_is_refused_and_at_the_limit_accepted() -> None:
    # "AAAA" decodes to three zero bytes; "AAA=" to two.
    quads = MAX_AUDIO_BYTES // 3
    at_limit = "AAAA" * quads + "AAA="
    over = "AAAA" * (quads + 1)
    assert 3 * quads + 2 == MAX_AUDIO_BYTES

    job = JobRequest(task="transcribe", audio=at_limit)
    assert len(job.audio_bytes()) == MAX_AUDIO_BYTES
    with pytest.raises(ValidationError) as raised:
        JobRequest(task="transcribe", audio=over)
    assert explain(raised.value) == (
        f"audio: audio is {MAX_AUDIO_BYTES + 1} bytes, over the limit of {MAX_AUDIO_BYTES};"
        " split the file"
    )


@pytest.mark.parametrize(
    ("model", "language"),
    [
        ("whisper-base", "fr"),
        ("whisper-base", None),
        ("whisper-tiny.en", "en"),
        ("whisper-tiny.en", None),
        ("", "fr"),
    ],
)
def test_a_language_the_model_speaks_is_accepted(model: str, language: str | None) -> None:
    job = JobRequest(task="transcribe", audio=WAV_B64, model=model, language=language)

    assert job.language == language
    assert job.model == (model or "whisper-base")
    assert job.inputs == []
    assert job.audio_bytes() == base64.b64decode(WAV_B64)


def test_a_transcribe_job_reads_off_the_wire() -> None:
    job_id = uuid.uuid4()
    body = json.dumps(
        {
            "job_id": str(job_id),
            "schema_version": 1,
            "task": "transcribe",
            "audio": WAV_B64,
            "language": "de",
        }
    ).encode()

    job = read_job(body)

    assert isinstance(job, JobRequest)
    assert (job.job_id, job.task, job.model, job.language) == (
        job_id,
        "transcribe",
        "whisper-base",
        "de",
    )


def test_text_jobs_take_their_task_defaults() -> None:
    classify = JobRequest(task="classify", inputs=["refund please"])

    assert (classify.model, classify.top_k, classify.audio) == ("rag-intent-classifier", 5, None)
    assert classify.audio_bytes() == b""


# -- outputs of every task ------------------------------------------------------------------

OUTPUTS: dict[str, tuple[str, object]] = {
    "embed": (EMBED, [[0.25, -0.5, 1e-7], [1.0, 0.0, -0.0]]),
    "classify": (
        "rag-intent-classifier",
        [
            {
                "label": "refund",
                "score": 0.875,
                "top": [{"label": "refund", "score": 0.875}, {"label": "other", "score": 0.125}],
            },
            {"label": "greeting", "score": 1.0, "top": [{"label": "greeting", "score": 1.0}]},
        ],
    ),
    "transcribe": (
        "whisper-base",
        {
            "text": "Hello there. General Kenobi.",
            "language": "en",
            "duration_s": 31.5,
            "segments": [
                {"start": 0.0, "end": 2.0, "text": " Hello there."},
                {"start": 25.5, "end": 28.0, "text": " General Kenobi."},
            ],
        },
    ),
}


@pytest.mark.parametrize("task", list(OUTPUTS))
def test_verdict_with_output_round_trips_each_task(task: str) -> None:
    model, output = OUTPUTS[task]
    bare = Verdict(
        job_id=uuid.uuid4(),
        status="verified",
        task=task,
        model=model,
        replicas=3,
        agreeing=["a", "b"],
    )
    assert bare.output() is None

    verdict = bare.with_output(output)

    assert verdict.output() == output
    field = OUTPUT_FIELD[task]  # type: ignore[index]
    assert getattr(verdict, field) is not None
    assert all(getattr(verdict, f) is None for f in OUTPUT_FIELD.values() if f != field)
    assert verdict.model_copy(update={field: None}) == bare
    again = Verdict.model_validate_json(verdict.model_dump_json())
    assert again == verdict
    assert again.output() == output


@pytest.mark.parametrize("task", list(OUTPUTS))
def test_inference_result_output_of_each_task(task: str) -> None:
    model, output = OUTPUTS[task]
    result = InferenceResult.model_validate(
        {
            "assignment_id": str(uuid.uuid4()),
            "job_id": str(uuid.uuid4()),
            "node_id": "host-node-1",
            "task": task,
            "model": model,
            "hw_class": "cpu-fp32",
            "precision": "fp32",
            OUTPUT_FIELD[task]: output,  # type: ignore[index]
        }
    )

    assert result.output() == output
    assert InferenceResult.model_validate_json(result.model_dump_json()).output() == output
    failed = result.model_copy(update={OUTPUT_FIELD[task]: None, "error": "out of memory"})  # type: ignore[index]
    assert failed.output() is None


def test_a_classification_must_carry_its_top_labels() -> None:
    _, output = OUTPUTS["classify"]
    broken = [{"label": "refund", "score": 0.875}]
    bare = Verdict(job_id=uuid.uuid4(), status="verified", task="classify")

    assert bare.with_output(output).classes is not None
    with pytest.raises(ValidationError, match="top"):
        bare.with_output(broken)


@pytest.mark.parametrize(
    ("precision", "build", "label"),
    [
        ("int8", "", "int8"),
        ("int8", "int8", "int8"),
        ("int8", "int8-avx2", "int8/int8-avx2"),
        ("fp32", "fp32", "fp32"),
    ],
)
def test_a_result_names_its_build_only_when_it_is_not_the_default(
    precision: str, build: str, label: str
) -> None:
    result = InferenceResult(
        assignment_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        node_id="n1",
        model="all-MiniLM-L6-v2",
        hw_class="cpu-int8" if precision == "int8" else "cpu-fp32",
        precision=precision,
        build=build,
        embeddings=[[1.0]],
    )
    assert result.precision_label() == label
