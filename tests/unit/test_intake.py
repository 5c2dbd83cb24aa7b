"""Reading a job off the wire: the bad-input table, and no byte string that crashes it."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortensor.catalog import TASKS
from cortensor.cli import SCHEMAS_DIR
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
    printable,
)
from tests.bad_jobs import AUDIO, BadJob, bad_jobs
from tests.schema_jobs import objects, schema_valid

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


# -- the named bad-input table (tests/bad_jobs.py) -----------------------------------------

TABLE = bad_jobs(JOB_ID)


def test_the_table_names_at_least_fifty_distinct_cases() -> None:
    names = [case.name for case in TABLE]
    assert len(names) == len(set(names)) >= 50
    assert len({case.body for case in TABLE}) == len(TABLE)


@pytest.mark.parametrize("case", TABLE, ids=[case.name for case in TABLE])
def test_each_bad_job_ends_as_its_table_says(case: BadJob) -> None:
    outcome = read_job(case.body)
    if case.outcome == "dead-lettered":
        assert isinstance(outcome, Undeliverable), outcome
    else:
        assert isinstance(outcome, Rejected), outcome
        assert outcome.job_id == uuid.UUID(JOB_ID)
        # The ledger keeps only the task of a rejected request, when it is one.
        raw = json.loads(case.body, strict=False, parse_int=str)
        assert outcome.request == ({"task": raw["task"]} if raw.get("task") in TASKS else {})
    assert case.reason in outcome.reason, outcome.reason
    assert printable(outcome.reason, len(outcome.reason)) == outcome.reason  # storable


def test_undeliverable_reasons_say_what_to_publish() -> None:
    for raw in (b"{", body([1]), body({"inputs": ["x"]})):
        outcome = read_job(raw)
        assert isinstance(outcome, Undeliverable)
        assert "JobRequest" in outcome.reason


def test_a_long_bad_job_id_is_truncated_in_the_reason() -> None:
    outcome = read_job(body(job(job_id="x" * 10_000)))
    assert isinstance(outcome, Undeliverable)
    assert len(outcome.reason) < 200


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


# -- what the published schema lets a client leave out, it may leave out -----------------

PUBLISHED = json.loads((SCHEMAS_DIR / "JobRequest.schema.json").read_text())
COMPLETE: dict[str, dict[str, Any]] = {
    task: {
        "schema_version": SCHEMA_VERSION,
        "job_id": JOB_ID,
        "created_at": "2030-01-02T03:04:05Z",
        "task": task,
        "model": "",
        "inputs": [] if task == "transcribe" else ["hello world"],
        "audio": AUDIO if task == "transcribe" else None,
        "language": None,
        "top_k": 5,
        "messages": None,
        "max_tokens": 128,
        "redundancy": "auto",
        "hw_class": "any",
        "deadline_s": 30.0,
    }
    for task in ("embed", "classify", "transcribe", "generate")
}
"""A job of each task with every field written out, each at the published default
where the schema gives one."""


def test_the_published_schema_requires_only_the_job_id() -> None:
    assert PUBLISHED["required"] == ["job_id"]
    assert set(COMPLETE["embed"]) == set(PUBLISHED["properties"])
    assert PUBLISHED["properties"]["schema_version"]["default"] == SCHEMA_VERSION


@pytest.mark.parametrize("complete", COMPLETE.values(), ids=list(COMPLETE))
def test_a_complete_job_of_each_task_is_accepted(complete: dict[str, Any]) -> None:
    assert isinstance(read_job(body(complete)), JobRequest)


@pytest.mark.parametrize("field", sorted(set(PUBLISHED["properties"]) - set(PUBLISHED["required"])))
def test_each_optional_field_may_be_left_out(field: str) -> None:
    """Leaving a field out is the same as sending its published default; a field with
    no default (created_at: the time the router reads the job) may be left out too."""
    default = PUBLISHED["properties"][field].get("default", _DROP)
    tried = 0
    for complete in COMPLETE.values():
        if default is not _DROP and complete[field] != default:
            continue  # inputs: the default (none) fits transcribe jobs only
        without = {k: v for k, v in complete.items() if k != field}
        outcome = read_job(body(without))
        assert isinstance(outcome, JobRequest), (field, outcome)
        if default is _DROP:
            assert outcome.created_at.tzinfo is not None
        else:
            assert outcome == read_job(body(complete))
        tried += 1
    assert tried, f"no job of any task has {field} at its default"


def test_a_job_of_only_its_id_and_texts_is_accepted() -> None:
    outcome = read_job(body({"job_id": JOB_ID, "inputs": ["hello"]}))
    assert isinstance(outcome, JobRequest)
    assert (outcome.schema_version, outcome.task, outcome.redundancy) == (1, "embed", "auto")


# -- the published schema and the intake agree -------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects())
def test_a_job_the_schema_allows_always_has_a_readable_id(raw: dict[str, Any]) -> None:
    data = body(raw)
    assert schema_valid(data)  # the generator follows the schema
    outcome = read_job(data)
    assert not isinstance(outcome, Undeliverable), outcome
    assert outcome.job_id == uuid.UUID(raw["job_id"])


_LAX = st.sampled_from(["5", "1", "30", True, False, 5.0, 1.7e9, "2030-01-02T03:04:05"])
"""Values lax validation would take for a number or a time, which the schema refuses."""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=objects(),
    field=_FIELDS | st.sampled_from(["top_k", "audio", "language"]),
    value=_JSON | _LAX,
)
def test_a_job_the_schema_refuses_is_never_accepted(
    raw: dict[str, Any], field: str, value: Any
) -> None:
    data = body({**raw, field: value})
    if not schema_valid(data):
        assert not isinstance(read_job(data), JobRequest), data
