"""What becomes of each kind of dead letter (cortensor.protocol.dead): a readable job ends
with a verdict that says why, a node's task is dropped, the rest is parked with a reason;
headers a publisher forged change none of that."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortensor.protocol.dead import (
    FAULT_HEADER,
    REASON_HEADER,
    DropTask,
    EndJob,
    Park,
    death_of,
    decide,
)
from cortensor.schemas import JobRequest

ROUTER_QUEUE = "ns.router"
NODE_QUEUE = "ns.node.n1"
LIMIT = 5
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def death(queue: str = ROUTER_QUEUE, reason: str = "delivery_limit") -> dict[str, Any]:
    return {
        "count": 1,
        "reason": reason,
        "queue": queue,
        "time": WHEN,
        "exchange": "ns.submit",
        "routing-keys": ["job.alice"],
    }


def job() -> tuple[JobRequest, bytes]:
    request = JobRequest(inputs=["hello"], redundancy=1)
    return request, request.model_dump_json().encode()


def run(body: bytes, headers: dict[str, Any], owner: str | None = "alice", mid: str = "") -> Any:
    return decide(
        body,
        message_id=mid,
        headers=headers,
        owner=owner,
        router_queue=ROUTER_QUEUE,
        delivery_limit=LIMIT,
    )


def test_a_job_past_the_router_queues_delivery_limit_fails_saying_why() -> None:
    request, body = job()
    decision = run(body, {"x-death": [death()]})
    assert isinstance(decision, EndJob)
    verdict = decision.verdict
    assert (verdict.job_id, verdict.owner, verdict.status) == (request.job_id, "alice", "failed")
    assert (verdict.task, verdict.model) == (request.task, request.model)
    assert "exhausted its deliveries" in verdict.reason
    assert "in 6 deliveries" in verdict.reason
    assert f"queue {ROUTER_QUEUE} dead-lettered it past x-delivery-limit 5" in verdict.reason
    assert "x-death count 1" in verdict.reason
    assert verdict.reason.endswith("submit it again")
    assert decision.request == {"task": request.task}


def test_a_job_whose_content_is_at_fault_is_rejected_with_what_to_fix() -> None:
    job_id = uuid.uuid4()
    body = json.dumps({"job_id": str(job_id), "schema_version": 9, "task": "embed"}).encode()
    decision = run(body, {"x-death": [death()]})
    assert isinstance(decision, EndJob)
    assert (decision.verdict.job_id, decision.verdict.status) == (job_id, "rejected")
    assert "schema_version 9 is not supported" in decision.verdict.reason
    assert "exhausted its deliveries" in decision.verdict.reason
    assert decision.request == {"task": "embed"}


def test_a_job_the_router_dead_lettered_ends_with_the_routers_reason() -> None:
    _, body = job()
    failed = run(body, {REASON_HEADER: "SetupIncomplete: run `cortensor db upgrade`"})
    assert isinstance(failed, EndJob)
    assert failed.verdict.status == "failed"
    assert "the router could not take it: SetupIncomplete: run" in failed.verdict.reason
    rejected = run(body, {REASON_HEADER: "BadInput: too long", FAULT_HEADER: "input"})
    assert isinstance(rejected, EndJob)
    assert rejected.verdict.status == "rejected"
    assert "BadInput: too long" in rejected.verdict.reason
    assert "submit it again" not in rejected.verdict.reason


def test_headers_a_client_forged_on_its_job_are_not_believed() -> None:
    _, body = job()
    forged = {
        REASON_HEADER: "forged reason",
        FAULT_HEADER: "input",
        # RabbitMQ adds the router queue's entry to what the publisher sent.
        "x-death": [death(), death(queue=NODE_QUEUE)],
        "task": "cortensor.run_assignments",
    }
    decision = run(body, forged)
    assert isinstance(decision, EndJob)
    assert decision.verdict.status == "failed"
    assert "forged" not in decision.verdict.reason


def test_a_node_task_past_its_delivery_limit_is_dropped() -> None:
    headers = {"x-death": [death(queue=NODE_QUEUE)], "task": "cortensor.run_assignments"}
    decision = run(b"[[], {}, {}]", headers, owner=None)
    assert isinstance(decision, DropTask)
    assert decision.queue == NODE_QUEUE


def test_what_another_queue_dead_lettered_without_a_task_is_parked() -> None:
    decision = run(b"{}", {"x-death": [death(queue="ns.elsewhere")]})
    assert isinstance(decision, Park)
    assert "ns.elsewhere" in decision.reason


def test_an_unreadable_message_is_parked_with_the_routers_reason_or_its_own() -> None:
    said = run(b"not json", {REASON_HEADER: "message is not usable JSON"})
    assert said == Park("message is not usable JSON")
    own = run(b"[1]", {"x-death": [death()]})
    assert isinstance(own, Park)
    assert "not an object" in own.reason


def test_a_job_naming_no_owner_is_parked_with_its_job_id() -> None:
    request, body = job()
    decision = run(body, {REASON_HEADER: "routing key 'job.' names no owner"}, owner=None)
    assert decision == Park("routing key 'job.' names no owner", job_id=request.job_id)


def test_death_of_prefers_the_named_queues_entry_and_reads_its_fields() -> None:
    headers = {"x-death": [death(queue=NODE_QUEUE, reason="rejected"), death()]}
    found = death_of(headers, ROUTER_QUEUE)
    assert found is not None
    assert (found.queue, found.reason, found.count, found.at) == (
        ROUTER_QUEUE,
        "delivery_limit",
        1,
        WHEN,
    )
    assert found.routing_key == "job.alice"
    assert death_of({}, ROUTER_QUEUE) is None
    assert death_of({"x-death": "nonsense"}, ROUTER_QUEUE) is None


header_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


# No deadline: this machine is shared, and one slow example is not a failure here.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=200),
    headers=st.dictionaries(
        st.sampled_from(["x-death", REASON_HEADER, FAULT_HEADER, "task", "other"]), header_values
    ),
    owner=st.none() | st.just("alice"),
)
def test_any_dead_letter_gets_a_decision(body: bytes, headers: dict[str, Any], owner: Any) -> None:
    assert isinstance(run(body, headers, owner=owner), EndJob | DropTask | Park)
