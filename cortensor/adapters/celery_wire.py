"""Celery's task message protocol 2, written directly so that an asyncio router can
publish tasks that a Celery worker consumes, with publisher confirms, and no pickle."""

from __future__ import annotations

import json
from typing import Any

TASK_RUN_ASSIGNMENTS = "cortensor.run_assignments"
"""The node's one task: kwargs {"assignments": [Assignment, ...]}, all for that node."""


def task_message(
    task: str, task_id: str, kwargs: dict[str, Any], *, origin: str
) -> tuple[bytes, dict[str, Any]]:
    """Body and headers of a Celery protocol-2 task message with JSON arguments."""
    body = json.dumps(
        [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
        separators=(",", ":"),
    ).encode()
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": "{...}",
        "origin": origin,
        "ignore_result": True,
    }
    return body, headers
