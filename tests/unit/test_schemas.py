"""Messages: frozen, versioned, JSON on the wire, and their published JSON Schemas."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cortensor.cli import SCHEMAS_DIR, app
from cortensor.schemas import (
    MESSAGES,
    SCHEMA_VERSION,
    Assignment,
    InferenceResult,
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
    ]


def test_samples_cover_every_message() -> None:
    assert sorted(type(m).__name__ for m in samples()) == sorted(MESSAGES)
    assert len(MESSAGES) == 5


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
    assert "inputs" in job["required"]


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
