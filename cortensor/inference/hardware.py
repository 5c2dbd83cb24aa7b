"""What the local machine can do: the CPU's int8 instruction set (from /proc/cpuinfo) and CUDA."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

CPUINFO = Path("/proc/cpuinfo")

Int8Isa = Literal["avx512_vnni", "avx2", "other"]


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The ISA flags of the first CPU listed in `cpuinfo`; empty if it cannot be read.

    x86 kernels call the line `flags`, arm64 kernels `Features`.
    """
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def int8_isa(flags: Iterable[str]) -> Int8Isa:
    """The best int8 instruction set among `flags`, which picks the quantization config."""
    present = frozenset(flags)
    if "avx512_vnni" in present:
        return "avx512_vnni"
    if "avx2" in present:
        return "avx2"
    return "other"


CUDA_PROVIDER = "CUDAExecutionProvider"


def cuda_usable(onnx_providers: Iterable[str], ctranslate2_devices: int) -> bool:
    """Whether a node can run its CUDA classes: ONNX Runtime (embeddings) offers its CUDA
    provider and CTranslate2 (Whisper) sees at least one CUDA device. Both are needed,
    since a cuda-* node runs both libraries on the GPU."""
    return CUDA_PROVIDER in frozenset(onnx_providers) and ctranslate2_devices > 0


def cuda_available() -> bool:
    """Whether this machine can run the CUDA classes (see `cuda_usable`)."""
    # Imported here: reading the CPU flags must not load two inference libraries.
    import ctranslate2
    import onnxruntime

    providers = [str(p) for p in onnxruntime.get_available_providers()]
    return cuda_usable(providers, int(ctranslate2.get_cuda_device_count()))
