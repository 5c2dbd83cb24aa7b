"""Messages drawn from the published schemas under docs/schemas/, jobs above all.

hypothesis-jsonschema draws every leaf (a string, a number, an enum...) from its own
schema. Objects are drawn with hypothesis's fixed_dictionaries (the required fields, any
of the others, nothing else), lists with its lists, and references and anyOf followed
here, because hypothesis-jsonschema's own object strategy calls a hypothesis internal
that newer hypothesis releases no longer have; a UUID is drawn as one, a format it does
not generate.
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


def drawn_from(root: dict[str, Any], node: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Values of `node` (by default the whole of `root`), a part of schema `root`."""
    node = root if node is None else node
    if "$ref" in node:
        target = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        return st.deferred(lambda: drawn_from(root, target))
    if "anyOf" in node:
        return st.one_of([drawn_from(root, option) for option in node["anyOf"]])
    if node.get("type") == "object" and "properties" in node:
        fields, required = node["properties"], node.get("required", [])
        optional = {k: part for k, part in fields.items() if k not in required}
        return st.fixed_dictionaries(
            {k: drawn_from(root, fields[k]) for k in required},
            optional={k: drawn_from(root, part) for k, part in optional.items()},
        )
    if node.get("type") == "array" and "items" in node:
        low = node.get("minItems", 0)
        return st.lists(
            drawn_from(root, node["items"]), min_size=low, max_size=min(node.get("maxItems", 8), 8)
        )
    if node.get("format") == "uuid":
        return st.uuids().map(str)
    return from_schema({k: v for k, v in node.items() if k not in ("title", "description")})


def objects(schema: dict[str, Any] = PUBLISHED) -> st.SearchStrategy[dict[str, Any]]:
    """Jobs of `schema` (the published one, unless narrowed)."""
    strategy: st.SearchStrategy[dict[str, Any]] = drawn_from(schema)
    return strategy


def schema_valid(body: bytes) -> bool:
    """Whether `body` is JSON that the published schema (its formats too) allows."""
    try:
        raw = json.loads(body, strict=False)
    except (ValueError, RecursionError):
        return False
    return bool(CHECKER.is_valid(raw))
