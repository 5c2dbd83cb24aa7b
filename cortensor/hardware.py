"""What the local CPU can do, read from /proc/cpuinfo."""

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
