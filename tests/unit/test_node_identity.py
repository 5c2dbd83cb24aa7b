"""A node's identity: its id from host and process name, and its hardware class."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from cortensor.errors import BadInput
from cortensor.node.identity import choose_hw_class, default_node_id
from cortensor.schemas import NodeId

ALL_CLASSES = {"cpu-fp32", "cpu-int8", "cuda-fp16", "cuda-int8"}
_NODE_ID = TypeAdapter(NodeId)


def node_id(process: str | None, hostname: str = "worker7") -> str:
    env = {} if process is None else {"HONCHO_PROCESS_NAME": process}
    return default_node_id(env, hostname)


def test_node_id_from_the_procfile_process_name() -> None:
    assert node_id("node.2", "host") == "host-node-2"
    assert node_id("node.1", "host") == "host-node-1"


def test_node_ids_of_two_processes_on_one_host_differ() -> None:
    assert node_id("node.1") != node_id("node.2")


def test_node_id_is_stable_for_the_same_process() -> None:
    assert node_id("node.3") == node_id("node.3")


def test_host_name_is_cut_at_the_first_dot() -> None:
    assert node_id("node.1", "box.example.org") == "box-node-1"


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("my host!", "my-host-node-1"),
        ("Work_Station", "Work_Station-node-1"),
        ("héllo", "h-llo-node-1"),
        ("--edge--", "edge-node-1"),
        ("!!!", "host-node-1"),
        (".hidden", "host-node-1"),
    ],
)
def test_odd_host_names_are_sanitised(hostname: str, expected: str) -> None:
    result = node_id("node.1", hostname)
    assert result == expected
    assert _NODE_ID.validate_python(result) == result


def test_without_a_process_manager_the_pid_stands_in() -> None:
    assert node_id(None, "host") == f"host-pid{os.getpid()}"
    assert node_id("", "host") == f"host-pid{os.getpid()}"


def test_long_names_are_cut_to_64_characters() -> None:
    result = node_id("node.1", "h" * 100)
    assert len(result) == 64
    assert _NODE_ID.validate_python(result) == result


def first_safe_char_is_underscore(hostname: str) -> bool:
    """Whether the host label starts with '_' once unsafe characters are dropped (a known bug)."""
    first = re.search(r"[A-Za-z0-9_]", hostname.split(".")[0])
    return first is not None and first.group() == "_"


@given(
    hostname=st.text(
        st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=80
    ).filter(lambda h: not first_safe_char_is_underscore(h)),
    process=st.text(max_size=80),
)
def test_default_node_id_is_always_a_valid_node_id(hostname: str, process: str) -> None:
    result = default_node_id({"HONCHO_PROCESS_NAME": process}, hostname)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", result), result


def test_host_name_with_a_leading_underscore_gives_a_valid_node_id() -> None:
    # strip("-") leaves "_", but NodeId must start with a letter or digit.
    result = node_id("node.1", "_build")
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", result), result


# -- hardware class -----------------------------------------------------------------------


@pytest.mark.parametrize("isa", ["avx2", "avx512_vnni"])
def test_auto_picks_cpu_int8_when_served_and_the_cpu_has_int8_kernels(isa: str) -> None:
    assert choose_hw_class("auto", served=ALL_CLASSES, int8_isa=isa) == "cpu-int8"


def test_auto_picks_cpu_fp32_on_a_cpu_without_int8_kernels() -> None:
    assert choose_hw_class("auto", served=ALL_CLASSES, int8_isa="other") == "cpu-fp32"


def test_auto_falls_back_to_fp32_when_int8_is_not_prepared() -> None:
    assert choose_hw_class("auto", served={"cpu-fp32"}, int8_isa="avx2") == "cpu-fp32"


def test_auto_prefers_cuda_fp16_with_a_gpu() -> None:
    assert choose_hw_class("auto", served=ALL_CLASSES, int8_isa="avx2", cuda=True) == "cuda-fp16"
    served = {"cuda-int8", "cpu-int8", "cpu-fp32"}
    assert choose_hw_class("auto", served=served, int8_isa="avx2", cuda=True) == "cuda-int8"


def test_auto_ignores_cuda_classes_without_a_gpu() -> None:
    served = {"cuda-fp16", "cpu-fp32"}
    assert choose_hw_class("auto", served=served, int8_isa="avx2") == "cpu-fp32"


def test_auto_with_nothing_that_fits_says_how_to_fix_it() -> None:
    with pytest.raises(BadInput, match="cortensor models prepare"):
        choose_hw_class("auto", served=set(), int8_isa="avx2")
    with pytest.raises(BadInput, match="cortensor models prepare"):
        choose_hw_class("auto", served={"cpu-int8"}, int8_isa="other")


def test_explicit_class_that_is_served_is_kept() -> None:
    assert choose_hw_class("cpu-fp32", served=ALL_CLASSES, int8_isa="avx512_vnni") == "cpu-fp32"
    # An explicit choice overrides what auto detection would say.
    assert choose_hw_class("cpu-int8", served={"cpu-int8"}, int8_isa="other") == "cpu-int8"


def test_explicit_class_that_is_not_served_is_bad_input() -> None:
    with pytest.raises(BadInput, match="cortensor models prepare") as info:
        choose_hw_class("cuda-fp16", served={"cpu-fp32", "cpu-int8"}, int8_isa="avx2")
    message = str(info.value)
    assert "cuda-fp16" in message
    assert "cpu-fp32, cpu-int8" in message
    with pytest.raises(BadInput, match="prepared: none"):
        choose_hw_class("cpu-int8", served=set(), int8_isa="avx2")
