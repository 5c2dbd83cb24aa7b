"""A node's identity: its id from host and process name, and its hardware class."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from cortensor.errors import BadInput
from cortensor.schemas import NodeId
from cortensor.services.node.identity import HwChoice, choose_hw_class, default_node_id

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

CPU = {"cpu-fp32", "cpu-int8"}


@pytest.mark.parametrize(
    ("served", "isa", "cuda", "expected"),
    [
        # With a usable GPU: fp16 first, then int8 on the GPU, then the CPU classes.
        (ALL_CLASSES, "avx512_vnni", True, "cuda-fp16"),
        (ALL_CLASSES, "other", True, "cuda-fp16"),
        ({"cuda-int8", *CPU}, "avx2", True, "cuda-int8"),
        ({"cuda-int8"}, "other", True, "cuda-int8"),
        (CPU, "avx512_vnni", True, "cpu-int8"),
        ({"cpu-fp32"}, "avx2", True, "cpu-fp32"),
        # Without one, the CUDA classes do not count however well they are prepared.
        (ALL_CLASSES, "avx512_vnni", False, "cpu-int8"),
        (ALL_CLASSES, "avx2", False, "cpu-int8"),
        (ALL_CLASSES, "other", False, "cpu-fp32"),
        ({"cuda-fp16", "cuda-int8", "cpu-fp32"}, "avx2", False, "cpu-fp32"),
        ({"cpu-fp32"}, "avx512_vnni", False, "cpu-fp32"),
        ({"cpu-int8"}, "avx2", False, "cpu-int8"),
    ],
)
def test_auto_picks_the_best_served_class(
    served: set[str], isa: str, cuda: bool, expected: str
) -> None:
    assert choose_hw_class("auto", served=served, int8_isa=isa, cuda=cuda) == expected


@pytest.mark.parametrize(
    ("served", "isa", "cuda"),
    [
        (set(), "avx2", False),
        (set(), "avx512_vnni", True),
        ({"cpu-int8"}, "other", False),
        ({"cuda-fp16", "cuda-int8"}, "avx512_vnni", False),
        ({"cuda-fp16", "cpu-int8"}, "other", False),
    ],
)
def test_auto_with_nothing_that_fits_says_how_to_fix_it(
    served: set[str], isa: str, cuda: bool
) -> None:
    with pytest.raises(BadInput, match="cortensor models prepare"):
        choose_hw_class("auto", served=served, int8_isa=isa, cuda=cuda)


@given(
    served=st.sets(st.sampled_from(sorted(ALL_CLASSES))),
    isa=st.sampled_from(["avx512_vnni", "avx2", "other"]),
    cuda=st.booleans(),
)
def test_auto_never_picks_what_the_machine_cannot_run(
    served: set[str], isa: str, cuda: bool
) -> None:
    runnable = {"cpu-fp32"} | ({"cpu-int8"} if isa != "other" else set())
    runnable |= {"cuda-fp16", "cuda-int8"} if cuda else set()
    if not served & runnable:
        with pytest.raises(BadInput):
            choose_hw_class("auto", served=served, int8_isa=isa, cuda=cuda)
        return
    chosen = choose_hw_class("auto", served=served, int8_isa=isa, cuda=cuda)
    assert chosen in served & runnable
    order = ["cuda-fp16", "cuda-int8", "cpu-int8", "cpu-fp32"]
    assert all(c not in served & runnable for c in order[: order.index(chosen)])


@pytest.mark.parametrize(
    ("requested", "isa", "cuda"),
    [
        ("cpu-fp32", "avx512_vnni", False),
        ("cpu-fp32", "other", True),
        ("cpu-int8", "avx2", True),
        # An explicit choice overrides what auto detection would say about the CPU.
        ("cpu-int8", "other", False),
        ("cuda-fp16", "avx2", True),
        ("cuda-int8", "other", True),
    ],
)
def test_explicit_class_that_is_served_is_kept(requested: HwChoice, isa: str, cuda: bool) -> None:
    assert choose_hw_class(requested, served=ALL_CLASSES, int8_isa=isa, cuda=cuda) == requested


def test_explicit_class_that_is_not_served_is_bad_input() -> None:
    with pytest.raises(BadInput, match="cortensor models prepare") as info:
        choose_hw_class("cuda-fp16", served={"cpu-fp32", "cpu-int8"}, int8_isa="avx2", cuda=True)
    message = str(info.value)
    assert "cuda-fp16" in message
    assert "cpu-fp32, cpu-int8" in message
    with pytest.raises(BadInput, match="prepared: none"):
        choose_hw_class("cpu-int8", served=set(), int8_isa="avx2")


@pytest.mark.parametrize("requested", ["cuda-fp16", "cuda-int8"])
def test_explicit_cuda_class_without_a_gpu_is_bad_input(requested: HwChoice) -> None:
    with pytest.raises(BadInput, match="CUDA GPU") as info:
        choose_hw_class(requested, served=ALL_CLASSES, int8_isa="avx512_vnni", cuda=False)
    assert requested in str(info.value)
