"""The named bad-input table: job messages a client may publish, and how each must end.

A message whose job id can be read ends `rejected`, its reason naming the field to fix;
one without a readable job id is dead-lettered with the reason in a header. The unit
tests read each through the router's intake (tests/unit/test_intake.py); the contract
test publishes each with amqp-publish to a running router and finds the same outcome
on the servers (tests/integration/test_contract_fuzz.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from cortensor.schemas import (
    MAX_DEADLINE_S,
    MAX_INPUTS,
    MAX_NAME_CHARS,
    MAX_REDUNDANCY,
    MAX_TEXT_CHARS,
    MAX_TOP_K,
)

Outcome = Literal["rejected", "dead-lettered"]

AUDIO = "UklGRiQAAABXQVZF"
"""Base64 bytes that pass the schema (a WAV header's start); the router's audio check
refuses them, which a test that only reads the job does not reach."""


@dataclass(frozen=True, slots=True)
class BadJob:
    """One named case: the bytes published, how the job must end, and text its reason
    must hold (the field's name, or why nothing could be read)."""

    name: str
    body: bytes
    outcome: Outcome
    reason: str


def job(job_id: str, /, **changes: Any) -> dict[str, Any]:
    """A valid embed job as a minimal client writes it, with fields changed; a value of
    DROP removes the field."""
    raw: dict[str, Any] = {"job_id": job_id, "inputs": ["hello world"]}
    for key, value in changes.items():
        if value is DROP:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


DROP = object()


def encoded(raw: Any) -> bytes:
    """JSON as a client in another language may write it: NUL and lone surrogates as
    escapes, NaN and Infinity as literals."""
    return json.dumps(raw).encode()


def bad_jobs(job_id: str) -> list[BadJob]:
    """Every case, each job that has an id under `job_id` (a test running them together
    makes one id per case and passes the case's own)."""

    def rejected(name: str, reason: str, **changes: Any) -> BadJob:
        return BadJob(name, encoded(job(job_id, **changes)), "rejected", reason)

    def raw_rejected(name: str, body: bytes, reason: str) -> BadJob:
        return BadJob(name, body, "rejected", reason)

    def dead(name: str, body: bytes, reason: str) -> BadJob:
        return BadJob(name, body, "dead-lettered", reason)

    valid = encoded(job(job_id))
    quoted = job_id.encode()
    return [
        # -- no readable job id: dead letters ------------------------------------------
        dead("malformed-json", b"{not json", "not usable JSON"),
        dead("empty-body", b"", "not usable JSON"),
        dead("not-utf8", b"\xff\xfe\x00garbage", "not usable JSON"),
        dead("truncated-json", valid[:-1], "not usable JSON"),
        dead("trailing-garbage", valid + b" and more", "not usable JSON"),
        dead("single-quoted", valid.replace(b'"', b"'"), "not usable JSON"),
        dead("deeply-nested", b"[" * 1000 + b"]" * 1000, "not usable JSON"),
        dead("json-array", encoded([job(job_id)]), "JSON list, not an object"),
        dead("json-string", encoded("a job"), "JSON str, not an object"),
        dead("json-number", encoded(42), "JSON int, not an object"),
        dead("json-null", b"null", "JSON NoneType, not an object"),
        dead("missing-job-id", encoded(job(job_id, job_id=DROP)), "no job_id"),
        dead("non-uuid-job-id", encoded(job(job_id, job_id="job-42")), "'job-42' is not a UUID"),
        dead("numeric-job-id", encoded(job(job_id, job_id=42)), "'42' is not a UUID"),
        dead("null-job-id", encoded(job(job_id, job_id=None)), "'None' is not a UUID"),
        dead("empty-job-id", encoded(job(job_id, job_id="")), "is not a UUID"),
        dead("job-id-in-a-list", encoded(job(job_id, job_id=[job_id])), "is not a UUID"),
        dead("nul-in-job-id", encoded(job(job_id, job_id=job_id + "\x00")), "is not a UUID"),
        # -- a readable job id: rejected, naming the field ------------------------------
        rejected("schema-2", "schema_version 2 is not supported", schema_version=2),
        rejected("schema-as-string", "schema_version '1'", schema_version="1"),
        rejected("schema-true", "schema_version True", schema_version=True),
        rejected("schema-null", "schema_version None", schema_version=None),
        rejected("unknown-task", "task: ", task="translate"),
        rejected("null-task", "task: ", task=None),
        rejected("nul-in-task", "task: ", task="embed\x00"),
        rejected("unknown-model", "unknown model 'gpt-5'", model="gpt-5"),
        rejected("model-too-long", "model: ", model="m" * (MAX_NAME_CHARS + 1)),
        rejected("nul-in-model", "model: holds a NUL character", model="all-MiniLM\x00"),
        rejected("model-of-another-task", "unknown model 'whisper-base'", model="whisper-base"),
        rejected("unknown-hw-class", "hw_class: ", hw_class="tpu-bf16"),
        rejected("hw-class-list", "hw_class: ", hw_class=["cpu-int8"]),
        rejected("empty-inputs", "inputs: ", inputs=[]),
        rejected("missing-inputs", "inputs: ", inputs=DROP),
        rejected("null-inputs", "inputs: ", inputs=None),
        rejected("inputs-not-a-list", "inputs: ", inputs="just a string"),
        rejected("inputs-an-object", "inputs: ", inputs={"0": "text"}),
        rejected("blank-text", "inputs: inputs [1] are blank", inputs=["fine", "   \n\t"]),
        rejected("empty-text", "inputs.0: ", inputs=[""]),
        rejected("non-string-text", "inputs.0: ", inputs=[42]),
        rejected("nested-text", "inputs.0: ", inputs=[["nested"]]),
        rejected("text-too-long", "inputs.0: ", inputs=["x" * (MAX_TEXT_CHARS + 1)]),
        rejected("too-many-inputs", "inputs: ", inputs=["x"] * (MAX_INPUTS + 1)),
        rejected("nul-in-text", "inputs.1: holds a NUL character", inputs=["ok", "bad\x00"]),
        raw_rejected(
            "raw-nul-byte-in-text",
            b'{"job_id": "' + quoted + b'", "inputs": ["ok", "bad\x00byte"]}',
            "inputs.1: holds a NUL character",
        ),
        rejected("lone-surrogate", "inputs.0: ", inputs=["\ud800"]),
        raw_rejected(
            "huge-integer",
            b'{"job_id": "' + quoted + b'", "inputs": ["x"], "redundancy": 1' + b"0" * 5000 + b"}",
            "redundancy: must be auto or a whole number",
        ),
        raw_rejected(
            "huge-integer-version",
            b'{"job_id": "'
            + quoted
            + b'", "inputs": ["x"], "schema_version": 1'
            + b"0" * 5000
            + b"}",
            "schema_version Decimal('1000",
        ),
        rejected("redundancy-0", "redundancy: ", redundancy=0),
        rejected("redundancy-max+1", "redundancy: ", redundancy=MAX_REDUNDANCY + 1),
        rejected("redundancy-fraction", "redundancy: ", redundancy=2.5),
        rejected("redundancy-as-string", "redundancy: ", redundancy="3"),
        rejected("redundancy-true", "redundancy: ", redundancy=True),
        rejected("redundancy-Auto", "redundancy: ", redundancy="Auto"),
        rejected("deadline-0", "deadline_s: ", deadline_s=0),
        rejected("deadline-negative", "deadline_s: ", deadline_s=-5),
        rejected("deadline-too-long", "deadline_s: ", deadline_s=MAX_DEADLINE_S + 1),
        rejected("deadline-nan", "deadline_s: ", deadline_s=float("nan")),
        rejected("deadline-infinite", "deadline_s: ", deadline_s=float("inf")),
        rejected("deadline-as-string", "deadline_s: ", deadline_s="30"),
        rejected("deadline-true", "deadline_s: ", deadline_s=True),
        rejected("top-k-0", "top_k: ", task="classify", top_k=0),
        rejected("top-k-max+1", "top_k: ", task="classify", top_k=MAX_TOP_K + 1),
        rejected("top-k-as-string", "top_k: ", task="classify", top_k="5"),
        rejected("top-k-fraction", "top_k: ", task="classify", top_k=2.5),
        rejected("extra-field", "priority: Extra inputs are not permitted", priority="high"),
        rejected("nul-in-field-name", "colour\\u0000: ", **{"colour\x00": 1}),
        rejected("bad-created-at", "created_at: ", created_at="yesterday"),
        rejected("created-at-a-number", "created_at: must be an RFC 3339", created_at=1.7e9),
        rejected(
            "created-at-naive", "created_at: needs its UTC offset", created_at="2030-01-02T03:04:05"
        ),
        rejected(
            "created-at-out-of-range",
            "created_at: is out of range",
            created_at="0001-01-01T00:00:00+14:00",
        ),
        rejected("transcribe-with-texts", "inputs: transcribe jobs take audio", task="transcribe"),
        rejected(
            "transcribe-without-audio",
            "audio: transcribe jobs need the audio",
            task="transcribe",
            inputs=DROP,
        ),
        rejected("embed-with-audio", "audio: embed jobs take texts", audio=AUDIO),
        rejected(
            "audio-not-base64",
            "audio: audio is not valid base64",
            task="transcribe",
            inputs=DROP,
            audio="not base64!",
        ),
        rejected("audio-empty", "audio: audio is empty", task="transcribe", inputs=DROP, audio=""),
        rejected(
            "language-not-a-code",
            "language: ",
            task="transcribe",
            inputs=DROP,
            audio=AUDIO,
            language="English",
        ),
        rejected(
            "language-for-an-english-only-model",
            "language: model whisper-tiny.en transcribes English only",
            task="transcribe",
            inputs=DROP,
            audio=AUDIO,
            model="whisper-tiny.en",
            language="de",
        ),
    ]
