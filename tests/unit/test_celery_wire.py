"""Celery task messages written by hand: a real Celery worker must accept them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import celery
import pytest
from celery.worker.request import Request
from kombu.message import Message

from cortensor.adapters.celery_wire import TASK_RUN_ASSIGNMENTS, task_message

KWARGS: dict[str, Any] = {
    "assignments": [
        {
            "assignment_id": "6f1c7a1e-0000-4000-8000-000000000001",
            "inputs": ["héllo", "wörld ✓", ""],
            "nested": {"n": [1, 2.5, None, True]},
        },
        {"assignment_id": "6f1c7a1e-0000-4000-8000-000000000002", "inputs": ["b"]},
    ]
}
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@pytest.fixture
def task_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def app() -> Iterator[celery.Celery]:
    app = celery.Celery("cortensor-test", set_as_current=False)
    app.conf.update(task_ignore_result=True, accept_content=["json"], task_serializer="json")
    app.calls = []

    # shared=False: each test app keeps its own task, no cross-app registration warning.
    @app.task(name=TASK_RUN_ASSIGNMENTS, shared=False)  # type: ignore[untyped-decorator]
    def run_assignments(assignments: Any) -> str:
        app.calls.append(assignments)
        return "done"

    yield app
    app.close()


def test_body_is_args_kwargs_embed(task_id: str) -> None:
    body, _ = task_message(TASK_RUN_ASSIGNMENTS, task_id, KWARGS, origin="router@host")
    assert isinstance(body, bytes)
    assert json.loads(body) == [[], KWARGS, EMBED]


def test_headers_carry_task_name_and_id(task_id: str) -> None:
    _, headers = task_message(TASK_RUN_ASSIGNMENTS, task_id, KWARGS, origin="router@host")
    assert headers["task"] == TASK_RUN_ASSIGNMENTS == "cortensor.run_assignments"
    assert headers["id"] == task_id
    assert headers["root_id"] == task_id
    assert headers["parent_id"] is None
    assert headers["group"] is None
    assert headers["lang"] == "py"
    assert headers["origin"] == "router@host"
    assert headers["retries"] == 0
    assert headers["ignore_result"] is True


def test_headers_are_json_and_hold_no_arguments(task_id: str) -> None:
    # The headers travel as AMQP table values; they must not repeat the (large) inputs.
    _, headers = task_message(TASK_RUN_ASSIGNMENTS, task_id, KWARGS, origin="r")
    assert json.loads(json.dumps(headers)) == headers
    assert "héllo" not in json.dumps(headers)


def test_headers_match_what_celery_itself_would_send(app: celery.Celery, task_id: str) -> None:
    _, headers = task_message(TASK_RUN_ASSIGNMENTS, task_id, KWARGS, origin="r")
    native = app.amqp.as_task_v2(task_id, TASK_RUN_ASSIGNMENTS, args=(), kwargs=KWARGS)
    # Celery's own headers, less the stamping and replacement bookkeeping it adds for canvas.
    optional = {"stamped_headers", "stamps", "replaced_task_nesting"}
    assert set(native.headers) - optional <= set(headers)
    for key in ("lang", "task", "id", "root_id", "parent_id", "group", "retries", "eta"):
        assert headers[key] == native.headers[key], key
    args, kwargs, embed = native.body
    assert json.loads(task_message(TASK_RUN_ASSIGNMENTS, task_id, KWARGS, origin="r")[0]) == [
        list(args),
        kwargs,
        embed,
    ]


def kombu_message(body: bytes, headers: dict[str, Any], task_id: str) -> Message:
    return Message(
        body=body,
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        properties={"correlation_id": task_id},
        delivery_info={"exchange": "ns.hw.cpu-fp32", "routing_key": "host-node-1"},
        accept=["application/json"],
    )


def test_kombu_decodes_the_body(task_id: str) -> None:
    body, headers = task_message(TASK_RUN_ASSIGNMENTS, task_id, KWARGS, origin="r")
    assert kombu_message(body, headers, task_id).decode() == [[], KWARGS, EMBED]


def test_a_celery_worker_request_runs_the_task_with_the_kwargs(
    app: celery.Celery, task_id: str
) -> None:
    body, headers = task_message(TASK_RUN_ASSIGNMENTS, task_id, KWARGS, origin="router@host")
    message = kombu_message(body, headers, task_id)
    request = Request(message, app=app, task=app.tasks[TASK_RUN_ASSIGNMENTS])
    assert request.id == task_id
    assert request.name == TASK_RUN_ASSIGNMENTS
    assert request.args == []
    assert request.kwargs == KWARGS
    assert request.execute() == "done"
    assert app.calls == [KWARGS["assignments"]]
