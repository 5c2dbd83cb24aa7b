"""Starting a node: identity, hardware class, its models, then the Celery worker."""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
from dataclasses import replace
from functools import partial

import structlog

from cortensor import metrics
from cortensor.adapters.keyfile import node_key
from cortensor.catalog import HW_CLASSES, OPT_IN, TASK_OF, TASKS, HwClass
from cortensor.errors import BadInput, ModelsNotPrepared
from cortensor.inference.hardware import Int8Isa, cpu_flags, cuda_available, int8_isa
from cortensor.inference.manifest import (
    FileChecks,
    Manifest,
    ModelVariant,
    load_manifest,
    verify_variant,
)
from cortensor.inference.runtimes import Embedder, Runtime
from cortensor.inference.runtimes.classifier import ClassifierRuntime
from cortensor.inference.runtimes.embedding import Device, EmbeddingRuntime
from cortensor.inference.runtimes.generator import GeneratorRuntime
from cortensor.inference.runtimes.whisper import WhisperRuntime
from cortensor.schemas import NodeHeartbeat
from cortensor.services.node.bridge import NatsBridge
from cortensor.services.node.celery_app import make_app, run_worker
from cortensor.services.node.faults import ADAPTING_MODES, Fault, FaultMode
from cortensor.services.node.hostile import (
    ADAPTIVE,
    CREW_WINDOW_S,
    PROBE_AWARE,
    SYBIL,
    Tactic,
    next_identity,
    with_node_id,
)
from cortensor.services.node.identity import HwChoice, choose_hw_class, default_node_id
from cortensor.services.node.lookout import Lookout
from cortensor.services.node.service import NodeIdentity, NodeService
from cortensor.settings import Settings

log = structlog.get_logger(__name__)


def build_node(
    settings: Settings,
    *,
    hw_class: HwChoice = "auto",
    node_id: str | None = None,
    fault: FaultMode | None = None,
    fault_rate: float | None = None,
    fault_group: str | None = None,
    fault_window_ms: float | None = None,
    fault_trust_after: int | None = None,
    fault_coordinate: bool = False,
    models: Collection[str] | None = None,
) -> NodeService:
    """Detect the class, load once each model it serves, and wire up the node service.

    `models` restricts the node to some of the catalog's models (all that the class
    serves when None); auto detection then picks the best class that serves them all.
    `fault_rate` None is the mode's default (faults.default_rate); `fault_group` names the
    group of a colluding node; `fault_window_ms` and `fault_trust_after` tune an adaptive
    node, `fault_coordinate` a sybil (hostile.Tactic).

    The node id is the principal's (its credentials) when set, else `node_id`, else the
    host's default; its key is settings.key_file (none: SetupIncomplete, at once).
    """
    wanted = _known(models)
    injected = Fault(fault, fault_rate, group=fault_group) if fault is not None else None
    manifest = load_manifest(settings.models_dir)
    isa = int8_isa(cpu_flags())
    cuda = cuda_available()
    served = {c: _loadable(manifest, c, isa, wanted) for c in HW_CLASSES}
    if wanted is not None and hw_class != "auto" and not served[hw_class]:
        missing = sorted(wanted - set(manifest.served(hw_class, isa)))
        raise BadInput(
            f"hardware class {hw_class} has no prepared variant of {', '.join(missing)} that"
            f" it can load on this CPU ({isa}); run `cortensor models prepare` or choose"
            " another class"
        )
    chosen = choose_hw_class(
        hw_class, served={c for c, names in served.items() if names}, int8_isa=isa, cuda=cuda
    )
    names = served[chosen]
    variants = {name: manifest.variant_for(name, chosen, isa) for name in names}
    # A head's base model is loaded for it even when the node does not serve that model.
    for base in {v.base_model for v in variants.values()} - {"", *variants}:
        variants[base] = manifest.variant_for(base, chosen, isa)
    _verify(settings, variants.values())
    key = node_key(settings)  # before the models load: a node without a key cannot serve
    loaded = _load(settings, chosen, variants)
    runtimes = {name: loaded[name] for name in names}
    tasks = tuple(t for t in TASKS if any(TASK_OF[n] == t for n in names))
    identity = NodeIdentity(
        node_id=(settings.principal if settings.principal_kind == "node" else "")
        or node_id
        or default_node_id(),
        hw_class=chosen,
        models=names,
        tasks=tasks,
        builds={name: _build(variants, name) for name in names},
    )
    if fault is not None and fault in ADAPTING_MODES:
        tactic = _tactic(fault, fault_window_ms, fault_trust_after, fault_coordinate)
        lookout = Lookout(settings, identity.node_id, tactic, group=fault_group)
        injected = Fault(fault, fault_rate, group=fault_group, cover=lookout)
    log.info(
        "node starting",
        node_id=identity.node_id,
        hw_class=chosen,
        variants={n: v.variant for n, v in variants.items()},
        fault=fault,
        fault_rate=injected.rate if injected else None,
        fault_group=fault_group,
    )
    bridge = NatsBridge(settings, name=f"node {identity.node_id}")
    return NodeService(
        settings, identity, runtimes=runtimes, fault=injected, bridge=bridge, key=key
    )


def _tactic(
    mode: str, window_ms: float | None, trust_after: int | None, coordinate: bool = False
) -> Tactic:
    """How an adapting node decides: probe-aware recognises probes; adaptive also waits
    `window_ms` for a peer's result and, with `trust_after`, for its own record; a sybil
    leaves when caught and, with `coordinate`, cheats only beside a fellow member."""
    if mode == "probe-aware":
        return PROBE_AWARE
    if mode == "sybil":
        window_s = CREW_WINDOW_S if window_ms is None else window_ms / 1000.0
        return replace(SYBIL, coordinate=coordinate, window_s=window_s)
    return Tactic(
        watch_peers=True,
        window_s=ADAPTIVE.window_s if window_ms is None else window_ms / 1000.0,
        trust_after=trust_after or 0,
    )


def _known(models: Collection[str] | None) -> frozenset[str] | None:
    if models is None:
        return None
    unknown = sorted(set(models) - set(TASK_OF))
    if unknown or not models:
        given = ", ".join(unknown) or "(none given)"
        raise BadInput(f"unknown model {given}; known models: {', '.join(TASK_OF)}")
    return frozenset(models)


def _loadable(
    manifest: Manifest, hw_class: HwClass, isa: Int8Isa, wanted: frozenset[str] | None
) -> tuple[str, ...]:
    """The models a node of `hw_class` loads: all it serves but the opt-in ones
    (catalog.OPT_IN), or exactly `wanted` if it serves every one of them (else none, so
    that auto detection passes the class over)."""
    names = manifest.served(hw_class, isa)
    if wanted is None:
        return tuple(n for n in names if n not in OPT_IN)
    return tuple(n for n in names if n in wanted) if wanted <= set(names) else ()


def _verify(settings: Settings, variants: Collection[ModelVariant]) -> None:
    checks: FileChecks = {}
    problems = [
        f"{v.name} {v.variant}: {problem}"
        for v in variants
        for problem in verify_variant(settings.models_dir, v, checks)
    ]
    if problems:
        raise ModelsNotPrepared(
            f"damaged models ({'; '.join(problems[:5])}); run `cortensor models prepare`"
        )


def _load(
    settings: Settings, hw_class: HwClass, variants: dict[str, ModelVariant]
) -> dict[str, Runtime]:
    device: Device = "cuda" if hw_class.startswith("cuda-") else "cpu"
    threads = settings.inference_threads
    runtimes: dict[str, Runtime] = {}
    embedders: dict[str, Embedder] = {}
    # Embedding models first: a classifier head runs over its base model's runtime.
    for name, variant in sorted(variants.items(), key=lambda item: bool(item[1].base_model)):
        if variant.format == "onnx":
            embedder = EmbeddingRuntime.from_manifest(
                settings.models_dir, variant, threads=threads, device=device
            )
            runtimes[name] = embedders[name] = embedder
        elif variant.format == "linear-head":
            runtimes[name] = ClassifierRuntime.from_manifest(
                settings.models_dir, variant, embedders[variant.base_model]
            )
        elif variant.format == "onnx-causal-lm":
            runtimes[name] = GeneratorRuntime.from_manifest(
                settings.models_dir, variant, threads=threads, device=device
            )
        else:
            runtimes[name] = WhisperRuntime.from_manifest(
                settings.models_dir,
                variant,
                device=device,
                threads=threads,
                batch_size=settings.whisper_batch_size,
            )
    return runtimes


def serve_node(service: NodeService) -> None:
    """Run the node until it is told to stop; its log lines name it, and its metrics
    (cortensor.metrics.node_collector) count what it runs."""
    structlog.contextvars.bind_contextvars(node_id=service.identity.node_id)
    metrics.node_collector(
        service.identity.node_id, service.identity.hw_class, partial(_counts, service)
    )
    service.start()
    if service.fault is not None and isinstance(service.fault.cover, Lookout):
        service.fault.cover.on_respawn = partial(_respawn, service)
        service.fault.cover.start()
    run_worker(make_app(service), service)


def _counts(service: NodeService) -> tuple[int, int]:
    """The assignments a node runs now and has finished (what its heartbeats say)."""
    beat = NodeHeartbeat.model_validate_json(service.heartbeat())
    return beat.inflight, beat.processed


def _respawn(service: NodeService) -> None:
    """Leave, and come back as a node nobody knows: this same command under the next
    node id (hostile.next_identity), in place of this process."""
    fresh = next_identity(service.identity.node_id)
    log.warning("sybil: caught; coming back as a new node", node_id=fresh)
    try:
        service.drain()  # routers stop sending to the old identity at once
    finally:
        for stream in (sys.stdout, sys.stderr):  # exec flushes nothing
            stream.flush()
        os.execv(sys.executable, [sys.executable, *with_node_id(sys.argv, fresh)])


PER_TOKEN_BUILD = "{variant}-tok"
"""The build a per-token int8 graph (cortensor.tools.quantize) announces. Its numbers
differ from those of the dynamic int8 graphs that nodes prepared before it, which
announced the variant's bare name: marked apart, a node not yet prepared again is
compared with the others as another build (comparators' BETWEEN_BUILDS), not held to
one graph's own tolerance that two graphs cannot meet."""


def _build(variants: dict[str, ModelVariant], name: str) -> str:
    """The variant that decides a model's numbers (a head's embedding model's own), and
    how it was quantized where graphs of one name have differed."""
    variant = variants[name]
    decides = variants[variant.base_model] if variant.base_model else variant
    if decides.quantization.startswith("per-token"):
        return PER_TOKEN_BUILD.format(variant=decides.variant)
    return decides.variant
