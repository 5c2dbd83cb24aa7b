"""Who a node is: its id and its hardware class."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Collection, Mapping
from typing import Literal

from cortensor.catalog import HW_CLASSES, HwClass
from cortensor.errors import BadInput

HwChoice = Literal["auto", "cpu-fp32", "cpu-int8", "cuda-fp16", "cuda-int8"]
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def default_node_id(env: Mapping[str, str] | None = None, hostname: str | None = None) -> str:
    """A stable id: the host name plus the Procfile process name (node.2 -> host-node-2).

    Outside a process manager the process id stands in, so two nodes started by hand
    on one host still differ (give --node-id to keep a reputation across restarts).
    """
    env = os.environ if env is None else env
    host = _UNSAFE.sub("-", (hostname or socket.gethostname()).split(".")[0]).strip("-_")
    host = host or "host"
    process = env.get("HONCHO_PROCESS_NAME") or f"pid{os.getpid()}"
    node_id = f"{host}-{_UNSAFE.sub('-', process)}".strip("-_")
    return node_id[:64] if node_id else "node"


def choose_hw_class(
    requested: HwChoice, *, served: Collection[str], int8_isa: str, cuda: bool = False
) -> HwClass:
    """The class a node runs as: the requested one, or the best one this machine serves.

    `served` holds the classes for which the models directory has a variant this CPU can
    run; `int8_isa` is the CPU's best int8 instruction set; `cuda` says whether a CUDA GPU
    is usable (hardware.cuda_available). Auto prefers the GPU (fp16, then int8), then the
    CPU's int8 kernels where it has AVX2 or VNNI, then fp32.
    """
    if requested != "auto":
        if requested.startswith("cuda-") and not cuda:
            raise BadInput(
                f"hardware class {requested} needs a CUDA GPU that both ONNX Runtime"
                " (onnxruntime-gpu) and CTranslate2 can use, and none was found here"
            )
        if requested not in served:
            raise BadInput(
                f"hardware class {requested} has no prepared model variant here;"
                f" prepared: {', '.join(sorted(served)) or 'none'} (run `cortensor models prepare`)"
            )
        return requested
    preference: list[HwClass] = []
    if cuda:
        preference += ["cuda-fp16", "cuda-int8"]
    if int8_isa != "other":
        preference.append("cpu-int8")
    preference.append("cpu-fp32")
    for hw_class in preference:
        if hw_class in served:
            return hw_class
    raise BadInput(
        "no prepared model variant fits this machine; run `cortensor models prepare`"
        f" (classes known: {', '.join(HW_CLASSES)})"
    )
