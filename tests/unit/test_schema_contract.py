"""Every published schema against its model: a message drawn from a schema is read by
the model or refused with a validation error (never a crash), and what the model
accepts it writes back as JSON its schema allows, so that a reader in another language
can rely on the schema for what the network publishes (verdicts and receipts above all)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from cortensor.cli import SCHEMAS_DIR
from cortensor.schemas import MESSAGES
from tests.schema_jobs import drawn_from

SCHEMAS = {name: json.loads((SCHEMAS_DIR / f"{name}.schema.json").read_text()) for name in MESSAGES}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_a_message_drawn_from_its_schema_is_read_or_refused_and_written_back_within_it(
    name: str,
) -> None:
    schema, model = SCHEMAS[name], MESSAGES[name]
    checker = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    read: list[bool] = []

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(drawn_from(schema))
    def check(raw: dict[str, Any]) -> None:
        data = json.dumps(raw)
        assert checker.is_valid(raw), raw  # the generator follows the schema
        try:
            message = model.model_validate_json(data)
        except ValidationError:
            read.append(False)
            return
        read.append(True)
        written = json.loads(message.model_dump_json())
        errors = [e.message for e in checker.iter_errors(written)]
        assert errors == [], (written, errors)

    check()
    assert any(read), f"no {name} drawn was read, so none was written back"


def test_every_message_has_a_schema_with_what_it_requires() -> None:
    for name, schema in SCHEMAS.items():
        assert set(schema.get("required", [])) <= set(schema["properties"]), name
        assert schema["additionalProperties"] is False, name
