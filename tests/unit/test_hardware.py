"""CPU ISA detection: which int8 kernels the quantizer should target."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.hardware import cpu_flags, int8_isa

_FLAGS = st.frozensets(st.sampled_from(["sse4_2", "avx", "avx2", "avx512f", "avx512_vnni", "fma"]))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"sse4_2", "avx", "avx2", "avx512f", "avx512_vnni"}, "avx512_vnni"),
        ({"sse4_2", "avx", "avx2", "avx512f"}, "avx2"),
        ({"avx2"}, "avx2"),
        ({"sse4_2", "avx"}, "other"),
        (set(), "other"),
        ({"fp", "asimd", "asimddp"}, "other"),
    ],
)
def test_int8_isa_on_known_flag_sets(flags: set[str], expected: str) -> None:
    assert int8_isa(flags) == expected


@given(_FLAGS)
def test_int8_isa_prefers_vnni_then_avx2(flags: frozenset[str]) -> None:
    isa = int8_isa(flags)
    if "avx512_vnni" in flags:
        assert isa == "avx512_vnni"
    elif "avx2" in flags:
        assert isa == "avx2"
    else:
        assert isa == "other"


def test_int8_isa_accepts_any_iterable() -> None:
    assert int8_isa(iter(["avx2", "fma"])) == "avx2"


def test_cpu_flags_reads_the_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_vnni\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 avx512_vnni\n"
    )
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "avx2", "avx512_vnni"})


def test_cpu_flags_reads_arm_features(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert cpu_flags(cpuinfo) == frozenset({"fp", "asimd", "asimddp"})


def test_cpu_flags_is_empty_when_unreadable(tmp_path: Path) -> None:
    assert cpu_flags(tmp_path / "absent") == frozenset()
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "noflags") == frozenset()
