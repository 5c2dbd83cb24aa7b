"""CORTENSOR_LOG_FORMAT=json: one JSON object per line, with the bound context as fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any, cast

from cortensor.services.node.celery_app import _log_context
from cortensor.services.node.service import NodeService

# Run in a child process: logging is configured once per process, for good.
SCRIPT = """
import logging
import structlog
from cortensor import cli

cli._configure_logging()
log = structlog.get_logger("test")
with structlog.contextvars.bound_contextvars(job_id="j-1", node_id="n-1", assignment_id="a-1"):
    log.info("job decided", status="verified")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("results not stored")
logging.getLogger("aio_pika").warning("a library's line")
import warnings
warnings.warn("a warning's line", UserWarning, stacklevel=1)
"""


def _lines(log_format: str) -> list[str]:
    env = {**os.environ, "CORTENSOR_LOG_FORMAT": log_format, "CORTENSOR_LOG_LEVEL": "INFO"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_json_lines_parse_and_carry_the_bound_context() -> None:
    records: list[dict[str, Any]] = [json.loads(line) for line in _lines("json")]
    decided, failed, library, warned = records
    assert decided["event"] == "job decided"
    assert decided["level"] == "info"
    assert decided["status"] == "verified"
    assert (decided["job_id"], decided["node_id"], decided["assignment_id"]) == (
        "j-1",
        "n-1",
        "a-1",
    )
    assert "timestamp" in decided
    assert failed["job_id"] == "j-1"
    assert "ValueError: boom" in failed["exception"]
    assert library["event"] == "a library's line"
    assert library["level"] == "warning"
    assert library["logger"] == "aio_pika"
    assert "a warning's line" in warned["event"]
    assert warned["logger"] == "py.warnings"


def test_console_lines_stay_the_default() -> None:
    first = _lines("console")[0]
    assert "job decided" in first
    assert "job_id=j-1" in first
    assert not first.startswith("{")


def test_a_node_task_names_its_job_and_assignment_when_it_carries_one() -> None:
    service = cast(NodeService, SimpleNamespace(identity=SimpleNamespace(node_id="node-7")))
    one = [{"job_id": "j-9", "assignment_id": "a-9"}]
    assert _log_context(service, one) == {
        "node_id": "node-7",
        "job_id": "j-9",
        "assignment_id": "a-9",
    }
    assert _log_context(service, [*one, *one]) == {"node_id": "node-7"}
    assert _log_context(service, ["not a dict"]) == {"node_id": "node-7"}
