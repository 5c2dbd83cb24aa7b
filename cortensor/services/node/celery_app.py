"""The node's Celery worker: consumes only the node's own quorum queue."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import structlog
from celery import Celery, signals
from celery.worker.consumer import Consumer
from celery.worker.state import maybe_shutdown
from kombu import Exchange, Queue

from cortensor.adapters.celery_wire import TASK_RUN_ASSIGNMENTS
from cortensor.services.node.service import NodeService
from cortensor.settings import split_urls
from cortensor.tls import amqp_url, broker_ssl

log = structlog.get_logger(__name__)

RECONNECT_START_S = 0.5
RECONNECT_STEP_S = 0.5
RECONNECT_MAX_S = 2.0
"""The node's tries to reach RabbitMQ, at start and after a lost connection: 0.5 s,
then 0.5 s more each time up to 2 s, for ever. kombu's own steps (2 s, growing by 2 s to
30 s) kept nodes away about 20 s after a 15 s broker outage."""


class NodeConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer without native delayed delivery.

    Assignments carry a deadline instead of an ETA, so the 28 delayed-delivery queues
    Celery would declare at each start for quorum queues are never used.
    """

    def ensure_connected(self, conn: Any) -> Any:
        """Connect to the broker, trying again on RECONNECT_* steps for ever (a node
        never gives up on its broker), one log line per try."""

        def retrying(exc: Exception, interval: float) -> None:
            log.warning("broker unreachable; trying again", error=str(exc)[:200], in_s=interval)

        conn = conn.ensure_connection(
            retrying,
            None,
            interval_start=RECONNECT_START_S,
            interval_step=RECONNECT_STEP_S,
            interval_max=RECONNECT_MAX_S,
            callback=maybe_shutdown,
        )
        self.first_connection_attempt = False
        self.broker_connection_retry_attempt = 0
        return conn

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps: ClassVar[list[str]] = [
            step
            for step in Consumer.Blueprint.default_steps
            if not step.endswith("DelayedDelivery")
        ]


def make_app(service: NodeService) -> Celery:
    """A Celery app bound to one node service and its queue."""
    settings, identity = service.settings, service.identity
    spec = service.topology.node_queue(identity.node_id, identity.hw_class)
    # The queue and its binding are declared by whoever issued the node's credentials
    # (`cortensor credentials issue node`): a node may configure nothing on the broker.
    queue = Queue(
        spec.name,
        Exchange(spec.exchange, type="direct", durable=True),
        routing_key=spec.routing_key,
        durable=True,
        queue_arguments=spec.arguments,
        no_declare=True,
    )
    # A cluster's nodes (comma-separated in the setting) are kombu's failover list,
    # `;`-separated; kombu moves round them when a connection is lost.
    broker = ";".join(split_urls(amqp_url(settings)))
    app = Celery(f"cortensor-node-{identity.node_id}", broker=broker, set_as_current=False)
    app.conf.update(
        task_queues=[queue],
        task_default_queue=spec.name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=settings.node_prefetch,
        worker_consumer=f"{__name__}:NodeConsumer",
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_detect_quorum_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # never give up (see NodeConsumer)
        broker_failover_strategy="round-robin",
        broker_transport_options={"confirm_publish": True},
        broker_use_ssl=broker_ssl(settings) or False,
    )

    @app.task(name=TASK_RUN_ASSIGNMENTS, acks_late=True, shared=False)  # type: ignore[untyped-decorator]
    def run_assignments(assignments: Any) -> str:
        batch = assignments if isinstance(assignments, list) else [assignments]
        with structlog.contextvars.bound_contextvars(**_log_context(service, batch)):
            return service.handle(batch)

    def on_ready(**_: Any) -> None:
        # A log line per task costs the node (and the Procfile runner relaying it)
        # a large share of a task's overhead; failures are still logged as errors.
        for name in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        service.announce()

    def on_shutdown(**_: Any) -> None:
        service.drain()

    # Heartbeats start only once the queue is consumed, so that no router sends work
    # to a node that is not listening yet.
    signals.worker_ready.connect(on_ready, weak=False)
    signals.worker_shutting_down.connect(on_shutdown, weak=False)
    if settings.log_format == "json":
        # A receiver of setup_logging keeps Celery from adding handlers of its own
        # format: every line goes through the JSON handler the command line set up.
        signals.setup_logging.connect(_logging_as_configured, weak=False)
    return app


def _logging_as_configured(**_: Any) -> None:
    """Leave logging as `cortensor` configured it (CORTENSOR_LOG_FORMAT)."""


def _log_context(service: NodeService, batch: list[Any]) -> dict[str, str]:
    """What the node's log lines say they are about while it runs a task: its node id,
    and the job and assignment when the task carries one assignment."""
    context = {"node_id": service.identity.node_id}
    if len(batch) == 1 and isinstance(batch[0], dict):
        for key in ("job_id", "assignment_id"):
            if isinstance(batch[0].get(key), str):
                context[key] = batch[0][key][:64]
    return context


def run_worker(app: Celery, service: NodeService, *, loglevel: str = "INFO") -> None:
    """Run the worker in this process until it is told to stop."""
    spec = service.topology.node_queue(service.identity.node_id, service.identity.hw_class)
    try:
        app.worker_main(
            [
                # JSON logs only: no start-up banner among them.
                *(["--quiet"] if service.settings.log_format == "json" else []),
                "worker",
                "--pool=threads",
                f"--concurrency={service.settings.node_threads}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--hostname={service.identity.node_id}@%h",
                f"--queues={spec.name}",
                f"--loglevel={loglevel}",
            ]
        )
    finally:
        service.close()
