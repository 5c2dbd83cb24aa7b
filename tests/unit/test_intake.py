"""Reading a job off the wire: the bad-input table, and no byte string that crashes it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortensor.protocol.intake import Rejected, Undeliverable, read_job
from cortensor.schemas import (
    DEFAULT_DEADLINE_S,
    MAX_DEADLINE_S,
    MAX_INPUTS,
    MAX_JOB_BYTES,
    MAX_REDUNDANCY,
    MAX_TEXT_CHARS,
    SCHEMA_VERSION,
    JobRequest,
)

JOB_ID = "0b0e4a2e-6a4c-4f51-9c44-6f5f0c1c7c11"


def job(**changes: Any) -> dict[str, Any]:
    """A valid job as a client would publish it, with some fields changed or removed."""
    raw: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "job_id": JOB_ID,
        "task": "embed",
        "inputs": ["hello world"],
    }
    for key, value in changes.items():
        if value is _DROP:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


_DROP = object()


def body(raw: Any) -> bytes:
    return json.dumps(raw).encode()


# -- messages without a readable job id: dead letters ------------------------------------

UNDELIVERABLE: list[Any] = [
    pytest.param(b"{not json", "not usable JSON", id="malformed-json"),
    pytest.param(b"", "not usable JSON", id="empty-body"),
    pytest.param(b"\xff\xfe\x00garbage", "not usable JSON", id="not-utf8"),
    pytest.param(body([job()]), "JSON list, not an object", id="json-array"),
    pytest.param(body("a job"), "JSON str, not an object", id="json-string"),
    pytest.param(body(42), "JSON int, not an object", id="json-number"),
    pytest.param(b"null", "JSON NoneType, not an object", id="json-null"),
    pytest.param(body(job(job_id=_DROP)), "no job_id", id="missing-job-id"),
    pytest.param(body(job(job_id="job-42")), "'job-42' is not a UUID", id="non-uuid-job-id"),
    pytest.param(body(job(job_id=42)), "'42' is not a UUID", id="numeric-job-id"),
    pytest.param(body(job(job_id=None)), "'None' is not a UUID", id="null-job-id"),
    pytest.param(body(job(job_id="")), "is not a UUID", id="empty-job-id"),
]


@pytest.mark.parametrize(("raw", "reason"), UNDELIVERABLE)
def test_messages_without_a_job_id_are_undeliverable(raw: bytes, reason: str) -> None:
    outcome = read_job(raw)
    assert isinstance(outcome, Undeliverable)
    assert reason in outcome.reason


def test_undeliverable_reasons_say_what_to_publish() -> None:
    for raw in (b"{", body([1]), body({"inputs": ["x"]})):
        outcome = read_job(raw)
        assert isinstance(outcome, Undeliverable)
        assert "JobRequest" in outcome.reason


def test_a_long_bad_job_id_is_truncated_in_the_reason() -> None:
    outcome = read_job(body(job(job_id="x" * 10_000)))
    assert isinstance(outcome, Undeliverable)
    assert len(outcome.reason) < 200


# -- jobs with an id but a bad request: rejected with a reason naming the field ------------

REJECTED: list[Any] = [
    pytest.param(job(schema_version=2), "schema_version 2 is not supported", id="schema-2"),
    pytest.param(job(schema_version=_DROP), "schema_version None", id="no-schema-version"),
    pytest.param(job(schema_version="1"), "schema_version '1'", id="schema-as-string"),
    pytest.param(job(task="translate"), "task: ", id="unknown-task"),
    pytest.param(job(model="gpt-5"), "unknown model 'gpt-5'", id="unknown-model"),
    pytest.param(job(hw_class="tpu-bf16"), "hw_class: ", id="unknown-hw-class"),
    pytest.param(job(inputs=[]), "inputs: ", id="empty-inputs"),
    pytest.param(job(inputs=_DROP), "inputs: ", id="missing-inputs"),
    pytest.param(job(inputs="just a string"), "inputs: ", id="inputs-not-a-list"),
    pytest.param(
        job(inputs=["fine", "   \n\t"]),
        "inputs: inputs [1] are blank",
        id="blank-text",
    ),
    pytest.param(job(inputs=[""]), "inputs.0: ", id="empty-text"),
    pytest.param(job(inputs=[42]), "inputs.0: ", id="non-string-text"),
    pytest.param(job(inputs=["x" * (MAX_TEXT_CHARS + 1)]), "inputs.0: ", id="text-too-long"),
    pytest.param(job(inputs=["x"] * (MAX_INPUTS + 1)), "inputs: ", id="too-many-inputs"),
    pytest.param(job(redundancy=0), "redundancy: ", id="redundancy-0"),
    pytest.param(job(redundancy=MAX_REDUNDANCY + 1), "redundancy: ", id="redundancy-max+1"),
    pytest.param(job(redundancy=2.5), "redundancy: ", id="redundancy-fraction"),
    pytest.param(job(deadline_s=0), "deadline_s: ", id="deadline-0"),
    pytest.param(job(deadline_s=-5), "deadline_s: ", id="deadline-negative"),
    pytest.param(job(deadline_s=MAX_DEADLINE_S + 1), "deadline_s: ", id="deadline-too-long"),
    pytest.param(
        job(priority="high"), "priority: Extra inputs are not permitted", id="extra-field"
    ),
    pytest.param(job(created_at="yesterday"), "created_at: ", id="bad-created-at"),
]


@pytest.mark.parametrize(("raw", "field"), REJECTED)
def test_bad_requests_are_rejected_naming_the_field(raw: dict[str, Any], field: str) -> None:
    outcome = read_job(body(raw))
    assert isinstance(outcome, Rejected), outcome
    assert outcome.job_id == uuid.UUID(JOB_ID)
    assert field in outcome.reason
    # The ledger keeps only the task of a rejected request, when it is one.
    assert outcome.request == ({"task": "embed"} if raw.get("task") == "embed" else {})


def test_unknown_model_lists_the_known_ones() -> None:
    outcome = read_job(body(job(model="gpt-5")))
    assert isinstance(outcome, Rejected)
    assert "all-MiniLM-L6-v2" in outcome.reason


def test_several_problems_are_all_reported() -> None:
    outcome = read_job(body(job(redundancy=0, deadline_s=0, colour="red")))
    assert isinstance(outcome, Rejected)
    for field in ("redundancy", "deadline_s", "colour"):
        assert field in outcome.reason
    assert outcome.reason.count("; ") == 2


def padded(size: int) -> bytes:
    """A valid job padded with JSON whitespace to exactly `size` bytes."""
    data = body(job())
    return data + b" " * (size - len(data))


def test_oversized_body_is_rejected_under_its_message_id_without_echoing_it() -> None:
    # The job is valid but for its size; the reply does not carry the body back.
    outcome = read_job(padded(MAX_JOB_BYTES + 1), JOB_ID)
    assert isinstance(outcome, Rejected)
    assert outcome.job_id == uuid.UUID(JOB_ID)
    assert f"job is {MAX_JOB_BYTES + 1} bytes, over the limit of {MAX_JOB_BYTES}" in outcome.reason
    assert outcome.request == {}


@pytest.mark.parametrize("message_id", ["", "job-42"])
def test_oversized_body_without_a_job_id_for_message_id_is_undeliverable(message_id: str) -> None:
    outcome = read_job(padded(MAX_JOB_BYTES + 1), message_id)
    assert isinstance(outcome, Undeliverable)
    assert f"job is {MAX_JOB_BYTES + 1} bytes, over the limit of {MAX_JOB_BYTES}" in outcome.reason


def test_oversized_body_is_refused_before_it_is_parsed() -> None:
    # Not JSON at all: a parse would call it undeliverable for that; the size speaks first.
    outcome = read_job(b"[" * (MAX_JOB_BYTES + 1), JOB_ID)
    assert isinstance(outcome, Rejected)
    assert "over the limit" in outcome.reason


def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    assert isinstance(read_job(padded(MAX_JOB_BYTES)), JobRequest)


def test_many_large_inputs_within_the_limit_are_accepted() -> None:
    data = body(job(inputs=["x" * 8000] * 64))
    assert len(data) <= MAX_JOB_BYTES
    assert isinstance(read_job(data), JobRequest)


# -- valid jobs ---------------------------------------------------------------------------


def test_a_valid_job_gets_its_defaults_and_the_default_model() -> None:
    outcome = read_job(body(job()))
    assert isinstance(outcome, JobRequest)
    assert outcome.job_id == uuid.UUID(JOB_ID)
    assert outcome.task == "embed"
    assert outcome.model == "all-MiniLM-L6-v2"
    assert outcome.inputs == ["hello world"]
    assert outcome.redundancy == "auto"
    assert outcome.hw_class == "any"
    assert outcome.deadline_s == DEFAULT_DEADLINE_S
    assert outcome.schema_version == SCHEMA_VERSION


def test_a_fully_specified_job_keeps_its_values() -> None:
    raw = job(
        model="all-MiniLM-L6-v2",
        inputs=["a", "b"],
        redundancy=MAX_REDUNDANCY,
        hw_class="int8",
        deadline_s=MAX_DEADLINE_S,
        created_at="2030-01-02T03:04:05Z",
    )
    outcome = read_job(body(raw))
    assert isinstance(outcome, JobRequest)
    assert (outcome.redundancy, outcome.hw_class, outcome.deadline_s) == (
        MAX_REDUNDANCY,
        "int8",
        MAX_DEADLINE_S,
    )
    assert outcome.created_at.year == 2030


@pytest.mark.parametrize("redundancy", [1, MAX_REDUNDANCY])
def test_redundancy_bounds_are_inclusive(redundancy: int) -> None:
    assert isinstance(read_job(body(job(redundancy=redundancy))), JobRequest)


def test_edge_sized_inputs_are_accepted() -> None:
    raw = job(inputs=["x" * MAX_TEXT_CHARS] + ["y"] * (MAX_INPUTS - 1))
    assert isinstance(read_job(body(raw)), JobRequest)


def test_a_job_published_by_the_model_itself_round_trips() -> None:
    original = JobRequest(inputs=["one", "two"], redundancy=5, hw_class="cpu-fp32")
    outcome = read_job(original.model_dump_json().encode())
    assert outcome == original


# -- nothing crashes it ---------------------------------------------------------------------


def check_outcome(outcome: object) -> None:
    assert isinstance(outcome, JobRequest | Rejected | Undeliverable)
    if not isinstance(outcome, JobRequest):
        assert outcome.reason


@given(st.binary(max_size=2048))
def test_read_job_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    check_outcome(read_job(data))


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=10,
)
_FIELDS = st.sampled_from(
    [
        "schema_version",
        "job_id",
        "task",
        "model",
        "inputs",
        "redundancy",
        "hw_class",
        "deadline_s",
        "created_at",
        "extra",
    ]
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=12) | _FIELDS, _JSON, max_size=8))
def test_read_job_never_raises_on_arbitrary_json_objects(raw: dict[str, Any]) -> None:
    check_outcome(read_job(body(raw)))


@given(
    overrides=st.dictionaries(_FIELDS, _JSON, max_size=4),
    job_id=st.uuids().map(str),
)
def test_any_variation_of_a_valid_job_is_classified_by_its_id(
    overrides: dict[str, Any], job_id: str
) -> None:
    raw = {**job(job_id=job_id), **overrides}
    outcome = read_job(body(raw))
    check_outcome(outcome)
    if "job_id" not in overrides:
        assert not isinstance(outcome, Undeliverable)
        assert outcome.job_id == uuid.UUID(job_id)


# -- known crashes ----------------------------------------------------------------------------


def test_deeply_nested_json_is_undeliverable() -> None:
    # 1,000 levels (2 KB, far under MAX_JOB_BYTES) exceed the interpreter's recursion limit.
    outcome = read_job(b"[" * 1000 + b"]" * 1000)
    assert isinstance(outcome, Undeliverable)


def test_json_with_a_huge_integer_is_classified() -> None:
    # ValueError('Exceeds the limit (4300 digits) ...') is not a JSONDecodeError.
    outcome = read_job(
        b'{"job_id": "' + JOB_ID.encode() + b'", "redundancy": 1' + b"0" * 5000 + b"}"
    )
    assert isinstance(outcome, Rejected | Undeliverable)
