"""Starting a node: identity, hardware class, model, then the Celery worker."""

from __future__ import annotations

import structlog

from cortensor.errors import ModelsNotPrepared
from cortensor.hardware import cpu_flags, int8_isa
from cortensor.models.manifest import load_manifest, verify_variant
from cortensor.models.prepare import EMBED_MODEL
from cortensor.node.celery_app import make_app, run_worker
from cortensor.node.faults import Fault, FaultMode
from cortensor.node.identity import HwChoice, choose_hw_class, default_node_id
from cortensor.node.service import NodeIdentity, NodeService
from cortensor.runtimes.embedding import EmbeddingRuntime
from cortensor.settings import Settings

log = structlog.get_logger(__name__)


def build_node(
    settings: Settings,
    *,
    hw_class: HwChoice = "auto",
    node_id: str | None = None,
    fault: FaultMode | None = None,
    fault_rate: float = 1.0,
) -> NodeService:
    """Detect the class, load its model variant once, and wire up the node service."""
    manifest = load_manifest(settings.models_dir)
    served = {c for v in manifest.variants if v.name == EMBED_MODEL for c in v.hw_classes}
    chosen = choose_hw_class(hw_class, served=served, int8_isa=int8_isa(cpu_flags()))
    variant = manifest.variant_for(EMBED_MODEL, chosen)
    problems = verify_variant(settings.models_dir, variant)
    if problems:
        raise ModelsNotPrepared(
            f"model {variant.name} {variant.variant} is damaged ({'; '.join(problems[:3])});"
            " run `cortensor models prepare`"
        )
    runtime = EmbeddingRuntime.from_manifest(
        settings.models_dir, variant, threads=settings.inference_threads
    )
    identity = NodeIdentity(
        node_id=node_id or default_node_id(), hw_class=chosen, model=variant.name
    )
    injected = Fault(fault, fault_rate) if fault is not None else None
    log.info(
        "node starting",
        node_id=identity.node_id,
        hw_class=chosen,
        variant=variant.variant,
        fault=fault,
        fault_rate=fault_rate if fault else None,
    )
    return NodeService(settings, identity, runtime, fault=injected)


def serve_node(service: NodeService) -> None:
    """Run the node until it is told to stop."""
    service.start()
    run_worker(make_app(service), service)
