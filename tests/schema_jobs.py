"""Job messages drawn from the published schema, docs/schemas/JobRequest.schema.json.

hypothesis-jsonschema draws every field from the field's own schema. The object around
them is drawn with hypothesis's fixed_dictionaries (the required fields, any of the
others, nothing else), because hypothesis-jsonschema's own object strategy calls a
hypothesis internal that newer hypothesis releases no longer have; job_id is drawn as
a UUID, a format it does not generate.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from cortensor.cli import SCHEMAS_DIR

PUBLISHED: dict[str, Any] = json.loads((SCHEMAS_DIR / "JobRequest.schema.json").read_text())
"""The schema as committed, which a test keeps equal to the model's."""
CHECKER = jsonschema.Draft202012Validator(
    PUBLISHED, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def objects(schema: dict[str, Any] = PUBLISHED) -> st.SearchStrategy[dict[str, Any]]:
    """Objects of `schema`: its required fields, any of its others, no more."""
    fields = schema["properties"]

    def field(name: str) -> st.SearchStrategy[Any]:
        return st.uuids().map(str) if name == "job_id" else from_schema(fields[name])

    return st.fixed_dictionaries(
        {name: field(name) for name in schema["required"]},
        optional={name: field(name) for name in fields if name not in schema["required"]},
    )


def schema_valid(body: bytes) -> bool:
    """Whether `body` is JSON that the published schema (its formats too) allows."""
    try:
        raw = json.loads(body, strict=False)
    except (ValueError, RecursionError):
        return False
    return bool(CHECKER.is_valid(raw))
