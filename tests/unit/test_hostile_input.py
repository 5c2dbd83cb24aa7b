"""The bad-input table: what comes from outside (jobs, results, heartbeats) is refused at
the schema, naming the field, when the ledger could not store it or it is too large;
whatever the schema accepts, the ledger can store."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cortensor.catalog import GENERATE_MODEL, MAX_MAX_TOKENS, TASKS
from cortensor.errors import BadInput
from cortensor.protocol.intake import Rejected, Undeliverable, explain, read_job
from cortensor.schemas import (
    MAX_CAPACITY,
    MAX_COUNT,
    MAX_EMBEDDING_DIM,
    MAX_ERROR_CHARS,
    MAX_INPUTS,
    MAX_LABEL_CHARS,
    MAX_LANGUAGE_CHARS,
    MAX_MODELS,
    MAX_NAME_CHARS,
    MAX_PROMPTS,
    MAX_TEXT_CHARS,
    MAX_TOP_K,
    MAX_TRANSCRIPT_CHARS,
    MAX_TURNS,
    NO_NUL_PATTERN,
    SCHEMA_VERSION,
    InferenceResult,
    JobRequest,
    Message,
    NodeHeartbeat,
    json_schemas,
    printable,
    storable,
)

JOB_ID = "0b0e4a2e-6a4c-4f51-9c44-6f5f0c1c7c11"
Path = tuple[str | int, ...]


def job() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "job_id": JOB_ID, "inputs": ["hello", "world"]}


def result(task: str = "embed") -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "assignment_id": str(uuid.uuid4()),
        "job_id": JOB_ID,
        "node_id": "node-1",
        "task": task,
        "model": "all-MiniLM-L6-v2",
        "hw_class": "cpu-int8",
        "precision": "int8",
        "build": "int8-avx2",
        "elapsed_ms": 3.5,
    }
    if task == "embed":
        base["embeddings"] = [[0.5, -0.25]]
    elif task == "classify":
        base["model"] = "rag-intent-classifier"
        top = {"label": "greeting", "score": 0.9}
        base["classes"] = [{"label": "greeting", "score": 0.9, "top": [top]}]
    elif task == "generate":
        base["model"] = GENERATE_MODEL
        base["generations"] = [{"text": "Paris.", "tokens": [7, 8], "finish_reason": "stop"}]
    else:
        base["model"] = "whisper-base"
        segment = {"start": 0.0, "end": 1.5, "text": "hello"}
        transcript = {"text": "hello", "language": "en", "duration_s": 1.5}
        base["transcript"] = {**transcript, "segments": [segment]}
    return base


def chat() -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "job_id": JOB_ID,
        "task": "generate",
        "messages": [{"role": "user", "content": "hello"}],
    }


def heartbeat() -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "node_id": "node-1",
        "hw_class": "cpu-int8",
        "precision": "int8",
        "tasks": ["embed"],
        "models": ["all-MiniLM-L6-v2"],
        "capacity": 4,
        "inflight": 0,
        "processed": 7,
        "started_at": "2030-01-02T03:04:05Z",
    }


Case = tuple[type[Message], Callable[[], dict[str, Any]], Path]

STRINGS: list[Case] = [
    (JobRequest, job, ("inputs", 1)),
    (JobRequest, job, ("model",)),
    (InferenceResult, result, ("model",)),
    (InferenceResult, result, ("build",)),
    (InferenceResult, result, ("error",)),
    (InferenceResult, lambda: result("classify"), ("classes", 0, "label")),
    (InferenceResult, lambda: result("classify"), ("classes", 0, "top", 0, "label")),
    (InferenceResult, lambda: result("transcribe"), ("transcript", "text")),
    (InferenceResult, lambda: result("transcribe"), ("transcript", "language")),
    (InferenceResult, lambda: result("transcribe"), ("transcript", "segments", 0, "text")),
    (NodeHeartbeat, heartbeat, ("models", 0)),
]
"""Every free-text field of what comes from outside, nested ones included."""

FLOATS: list[Case] = [
    (JobRequest, job, ("deadline_s",)),
    (InferenceResult, result, ("elapsed_ms",)),
    (InferenceResult, result, ("embeddings", 0, 1)),
    (InferenceResult, lambda: result("classify"), ("classes", 0, "score")),
    (InferenceResult, lambda: result("classify"), ("classes", 0, "top", 0, "score")),
    (InferenceResult, lambda: result("transcribe"), ("transcript", "duration_s")),
    (InferenceResult, lambda: result("transcribe"), ("transcript", "segments", 0, "start")),
    (InferenceResult, lambda: result("transcribe"), ("transcript", "segments", 0, "end")),
]
"""Every number that may be fractional."""

LIMITS: list[tuple[type[Message], Callable[[], dict[str, Any]], Path, int]] = [
    (JobRequest, job, ("inputs", 0), MAX_TEXT_CHARS),
    (InferenceResult, result, ("build",), MAX_NAME_CHARS),
    (InferenceResult, result, ("error",), MAX_ERROR_CHARS),
    (InferenceResult, lambda: result("classify"), ("classes", 0, "label"), MAX_LABEL_CHARS),
    (
        InferenceResult,
        lambda: result("classify"),
        ("classes", 0, "top", 0, "label"),
        MAX_LABEL_CHARS,
    ),
    (
        InferenceResult,
        lambda: result("transcribe"),
        ("transcript", "text"),
        MAX_TRANSCRIPT_CHARS,
    ),
    (
        InferenceResult,
        lambda: result("transcribe"),
        ("transcript", "language"),
        MAX_LANGUAGE_CHARS,
    ),
    (
        InferenceResult,
        lambda: result("transcribe"),
        ("transcript", "segments", 0, "text"),
        MAX_TEXT_CHARS,
    ),
]
"""Free-text fields whose content is not checked otherwise, and their limits."""


def ident(case: Any) -> str:
    return f"{case[0].__name__}." + ".".join(map(str, case[2]))


def put(raw: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """`raw` with `value` at `path`."""
    node: Any = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


def refusal(cls: type[Message], raw: dict[str, Any] | str) -> ValidationError:
    validate = cls.model_validate_json if isinstance(raw, str) else cls.model_validate
    with pytest.raises(ValidationError) as caught:
        validate(raw)
    return caught.value


def locs(exc: ValidationError) -> list[Path]:
    return [tuple(e["loc"]) for e in exc.errors()]


def test_a_result_computes_in_its_hardware_class_precision() -> None:
    """A node may not name another precision than its class's to be weighed against a
    looser tolerance (the ledger checks the class against the assignment's)."""
    for hw_class, precision in (("cpu-int8", "fp32"), ("cpu-fp32", "int8"), ("cuda-fp16", "fp32")):
        exc = refusal(InferenceResult, {**result(), "hw_class": hw_class, "precision": precision})
        assert locs(exc) == [("precision",)]
    assert InferenceResult.model_validate({**result(), "hw_class": "cuda-int8"}).precision == "int8"


# -- text the ledger cannot hold -------------------------------------------------------------


@pytest.mark.parametrize(("cls", "make", "path"), STRINGS, ids=map(ident, STRINGS))
def test_nul_in_any_string_is_refused_naming_the_field(
    cls: type[Message], make: Callable[[], dict[str, Any]], path: Path
) -> None:
    exc = refusal(cls, put(make(), path, "ab\x00c"))
    assert locs(exc) == [path]
    assert "NUL character (U+0000) at position 2" in str(exc)
    # The same from JSON text, where a client writes it as an escape.
    exc = refusal(cls, json.dumps(put(make(), path, "ab\x00c")))
    assert locs(exc) == [path]


@pytest.mark.parametrize(("cls", "make", "path"), STRINGS, ids=map(ident, STRINGS))
def test_a_lone_surrogate_in_any_string_is_refused(
    cls: type[Message], make: Callable[[], dict[str, Any]], path: Path
) -> None:
    # json.loads reads "\ud800" into a lone surrogate (the router's path); pydantic
    # cannot read it as text ...
    raw = json.loads(json.dumps(put(make(), path, "x\ud800")))
    exc = refusal(cls, raw)
    assert locs(exc) == [path]
    assert "unable to parse raw data as a unicode string" in str(exc)
    # ... and the JSON parser of model_validate_json (the guard's) refuses it as text.
    refusal(cls, json.dumps(put(make(), path, "x\udfff")))


@pytest.mark.parametrize(("cls", "make", "path"), STRINGS, ids=map(ident, STRINGS))
def test_a_surrogate_pair_is_one_character_and_accepted_where_the_field_is_free(
    cls: type[Message], make: Callable[[], dict[str, Any]], path: Path
) -> None:
    raw = json.dumps(put(make(), path, "x\U0001f600"))  # written as "\ud83d\ude00"
    if path[-1] == "model" or path[:1] == ("models",):
        return  # a model name is also checked against the catalog
    assert "\\ud83d\\ude00" in raw
    cls.model_validate_json(raw)


# -- numbers JSON cannot write -----------------------------------------------------------


@pytest.mark.parametrize(("cls", "make", "path"), FLOATS, ids=map(ident, FLOATS))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_nan_and_infinities_are_refused_in_every_float(
    cls: type[Message], make: Callable[[], dict[str, Any]], path: Path, value: float
) -> None:
    exc = refusal(cls, put(make(), path, value))
    assert path in locs(exc)
    # Python's json writes the NaN and Infinity literals that some parsers accept.
    literal = json.dumps(put(make(), path, value))
    assert "NaN" in literal or "Infinity" in literal
    assert path in locs(refusal(cls, literal))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_job_with_a_nan_literal_is_rejected_by_the_router(literal: str) -> None:
    body = json.dumps(job())[:-1] + f', "deadline_s": {literal}}}'
    outcome = read_job(body.encode())
    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith("deadline_s: ")


# -- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "make", "path", "limit"), LIMITS, ids=map(ident, LIMITS))
def test_free_text_is_accepted_up_to_its_limit_and_refused_past_it(
    cls: type[Message], make: Callable[[], dict[str, Any]], path: Path, limit: int
) -> None:
    cls.model_validate(put(make(), path, "x" * limit))
    exc = refusal(cls, put(make(), path, "x" * (limit + 1)))
    assert locs(exc) == [path]
    assert f"at most {limit} characters" in str(exc)


LISTS: list[tuple[type[Message], Callable[[], dict[str, Any]], Path, Any, int]] = [
    (JobRequest, job, ("inputs",), "x", MAX_INPUTS),
    (InferenceResult, result, ("embeddings",), [0.5], MAX_INPUTS),
    (InferenceResult, result, ("embeddings", 0), 0.5, MAX_EMBEDDING_DIM),
    (
        InferenceResult,
        lambda: result("classify"),
        ("classes", 0, "top"),
        {"label": "a", "score": 0.1},
        MAX_TOP_K,
    ),
    (NodeHeartbeat, heartbeat, ("models",), "all-MiniLM-L6-v2", MAX_MODELS),
    (NodeHeartbeat, heartbeat, ("tasks",), "embed", len(TASKS)),
    (JobRequest, chat, ("messages",), {"role": "user", "content": "x"}, MAX_TURNS),
    (
        InferenceResult,
        lambda: result("generate"),
        ("generations",),
        {"text": "x", "tokens": [1], "finish_reason": "stop"},
        MAX_PROMPTS,
    ),
    (
        InferenceResult,
        lambda: result("generate"),
        ("generations", 0, "tokens"),
        1,
        MAX_MAX_TOKENS,
    ),
]


@pytest.mark.parametrize(("cls", "make", "path", "item", "limit"), LISTS, ids=map(ident, LISTS))
def test_lists_are_accepted_up_to_their_limit_and_refused_past_it(
    cls: type[Message], make: Callable[[], dict[str, Any]], path: Path, item: Any, limit: int
) -> None:
    cls.model_validate(put(make(), path, [item] * limit))
    exc = refusal(cls, put(make(), path, [item] * (limit + 1)))
    assert locs(exc) == [path]


@pytest.mark.parametrize(
    ("field", "value"),
    [("capacity", MAX_CAPACITY + 1), ("inflight", MAX_COUNT + 1), ("processed", 10**40)],
)
def test_heartbeat_counts_past_what_a_reader_holds_are_refused(field: str, value: int) -> None:
    assert locs(refusal(NodeHeartbeat, put(heartbeat(), (field,), value))) == [(field,)]


def test_a_reason_is_bounded_and_storable_however_hostile_the_job() -> None:
    raw = {**job(), "inputs": ["ok\x00"] * MAX_INPUTS, "x\x00" * 5000: 1}
    outcome = read_job(json.dumps(raw).encode())
    assert isinstance(outcome, Rejected)
    assert len(outcome.reason) <= MAX_ERROR_CHARS
    assert storable(outcome.reason) == outcome.reason
    assert outcome.reason.startswith("inputs.0: holds a NUL character")
    assert outcome.request == {}


def test_storable_names_what_a_text_holds() -> None:
    assert storable("fine \U0001f600") == "fine \U0001f600"
    with pytest.raises(BadInput, match=r"a NUL character \(U\+0000\) at position 1"):
        storable("a\x00")
    with pytest.raises(BadInput, match=r"a lone surrogate \(U\+DC00\) at position 0"):
        storable("\udc00")


def test_explain_writes_the_senders_field_names_escaped_and_cut() -> None:
    with pytest.raises(ValidationError) as caught:
        JobRequest.model_validate({**job(), "a\x00" + "b" * 500: 1})
    reason = explain(caught.value)
    assert reason.startswith("a\\u0000bbb")
    assert "..." in reason
    assert len(reason) < 300


# -- the published schemas say so ----------------------------------------------------------


def test_the_json_schemas_forbid_nul_in_free_text() -> None:
    schema = json.dumps(json_schemas())
    assert json.dumps(NO_NUL_PATTERN) in schema
    inputs = json_schemas()["JobRequest.schema.json"]["properties"]["inputs"]
    assert inputs["items"]["pattern"] == NO_NUL_PATTERN
    assert inputs["items"]["maxLength"] == MAX_TEXT_CHARS
    assert inputs["maxItems"] == MAX_INPUTS


# -- whatever is accepted can be stored ---------------------------------------------------

HOSTILE = st.sampled_from(["\x00", "\ud800", "\udfff", "\U0001f600", " ", "\n"])
ANY_TEXT = st.text(HOSTILE | st.characters(exclude_categories=()), max_size=40)
"""Any code points, lone surrogates and NUL included (and often)."""


def can_store(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


@given(ANY_TEXT)
def test_any_error_text_is_refused_or_storable(text: str) -> None:
    try:
        checked = InferenceResult.model_validate({**result(), "error": text})
    except ValidationError:
        assert not can_store(text)
        return
    assert checked.error is not None
    assert can_store(checked.error)
    assert can_store(checked.model_dump_json())


@given(st.lists(ANY_TEXT, min_size=1, max_size=5))
def test_any_job_inputs_are_refused_or_storable(inputs: list[str]) -> None:
    body = json.dumps({**job(), "inputs": inputs}).encode()
    outcome = read_job(body)
    if isinstance(outcome, JobRequest):
        assert all(can_store(text) for text in outcome.inputs)
    else:
        assert isinstance(outcome, Rejected)
        assert can_store(outcome.reason)
        assert not all(can_store(t) and t.strip() for t in inputs)


@given(st.dictionaries(ANY_TEXT, ANY_TEXT | st.floats() | st.integers(), max_size=4))
def test_any_reason_for_refusing_a_job_is_storable(extra: dict[str, Any]) -> None:
    outcome = read_job(json.dumps({**job(), **extra}).encode())
    if isinstance(outcome, Rejected | Undeliverable):
        assert can_store(outcome.reason)
        assert len(outcome.reason) <= MAX_ERROR_CHARS + 200


@given(ANY_TEXT, st.integers(min_value=4, max_value=100))
def test_printable_is_storable_and_bounded(text: str, limit: int) -> None:
    shown = printable(text, limit)
    assert can_store(shown)
    assert len(shown) <= limit
    if can_store(text) and len(text) <= limit:
        assert shown == text
