"""What the machine can do: the CPU's int8 instruction set and whether CUDA is usable."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortensor.inference.hardware import (
    CUDA_PROVIDER,
    cpu_flags,
    cuda_available,
    cuda_usable,
    int8_isa,
)

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


# -- CUDA -----------------------------------------------------------------------------------

_CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]
_WITH_CUDA = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("providers", "devices", "usable"),
    [
        (_WITH_CUDA, 1, True),
        (_WITH_CUDA, 8, True),
        # onnxruntime-gpu on a machine without a GPU (or without the driver).
        (_WITH_CUDA, 0, False),
        # The CPU build of onnxruntime beside CTranslate2 that sees a GPU: the embedding
        # model would silently run on the CPU, so the node is no CUDA node.
        (_CPU_ONLY, 1, False),
        (_CPU_ONLY, 0, False),
        ([], 0, False),
        (["CUDAExecutionProvider"], 1, True),
        (["ROCMExecutionProvider", "CPUExecutionProvider"], 1, False),
    ],
)
def test_cuda_needs_both_libraries_to_see_it(
    providers: list[str], devices: int, usable: bool
) -> None:
    assert cuda_usable(providers, devices) is usable
    assert cuda_usable(iter(providers), devices) is usable


@given(st.lists(st.sampled_from([CUDA_PROVIDER, *_CPU_ONLY])), st.integers(-1, 16))
def test_cuda_usable_is_exactly_provider_and_device(providers: list[str], devices: int) -> None:
    assert cuda_usable(providers, devices) is (CUDA_PROVIDER in providers and devices > 0)


def test_cuda_available_reads_both_libraries() -> None:
    import ctranslate2
    import onnxruntime

    expected = cuda_usable(
        onnxruntime.get_available_providers(), ctranslate2.get_cuda_device_count()
    )
    assert cuda_available() is expected
