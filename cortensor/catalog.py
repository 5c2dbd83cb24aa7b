"""What the network can run: tasks, their models, hardware classes and precisions."""

from __future__ import annotations

from typing import Literal, get_args

HwClass = Literal["cpu-fp32", "cpu-int8", "cuda-fp16", "cuda-int8"]
Precision = Literal["fp32", "fp16", "int8"]
HwSpec = Literal["any", "cpu-fp32", "cpu-int8", "cuda-fp16", "cuda-int8", "fp32", "fp16", "int8"]
Task = Literal["embed"]

HW_CLASSES: tuple[HwClass, ...] = get_args(HwClass)
PRECISION: dict[HwClass, Precision] = {
    "cpu-fp32": "fp32",
    "cpu-int8": "int8",
    "cuda-fp16": "fp16",
    "cuda-int8": "int8",
}
MODELS: dict[Task, tuple[str, ...]] = {"embed": ("all-MiniLM-L6-v2",)}
DEFAULT_MODEL: dict[Task, str] = {"embed": "all-MiniLM-L6-v2"}
EMBEDDING_DIM: dict[str, int] = {"all-MiniLM-L6-v2": 384}


def eligible_classes(spec: HwSpec) -> tuple[HwClass, ...]:
    """The hardware classes that may serve a job asking for `spec` (a class, a precision or any)."""
    if spec == "any":
        return HW_CLASSES
    if spec in HW_CLASSES:
        return tuple(c for c in HW_CLASSES if c == spec)
    return tuple(c for c in HW_CLASSES if PRECISION[c] == spec)
