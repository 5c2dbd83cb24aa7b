"""What the network can run: tasks, their models, hardware classes and precisions."""

from __future__ import annotations

from typing import Literal, get_args

HwClass = Literal["cpu-fp32", "cpu-int8", "cuda-fp16", "cuda-int8"]
Precision = Literal["fp32", "fp16", "int8"]
HwSpec = Literal["any", "cpu-fp32", "cpu-int8", "cuda-fp16", "cuda-int8", "fp32", "fp16", "int8"]
Task = Literal["embed", "classify", "transcribe", "generate"]

HW_CLASSES: tuple[HwClass, ...] = get_args(HwClass)
TASKS: tuple[Task, ...] = get_args(Task)
TEXT_TASKS: frozenset[Task] = frozenset({"embed", "classify", "generate"})
"""Tasks whose inputs are texts; the rest take audio."""

PRECISION: dict[HwClass, Precision] = {
    "cpu-fp32": "fp32",
    "cpu-int8": "int8",
    "cuda-fp16": "fp16",
    "cuda-int8": "int8",
}

EMBED_MODEL = "all-MiniLM-L6-v2"
CLASSIFY_MODEL = "rag-intent-classifier"
WHISPER_BASE = "whisper-base"
WHISPER_TINY_EN = "whisper-tiny.en"
GENERATE_MODEL = "smollm2-135m-instruct"

MODELS: dict[Task, tuple[str, ...]] = {
    "embed": (EMBED_MODEL,),
    "classify": (CLASSIFY_MODEL,),
    "transcribe": (WHISPER_BASE, WHISPER_TINY_EN),
    "generate": (GENERATE_MODEL,),
}
DEFAULT_MODEL: dict[Task, str] = {
    "embed": EMBED_MODEL,
    "classify": CLASSIFY_MODEL,
    "transcribe": WHISPER_BASE,
    "generate": GENERATE_MODEL,
}
TASK_OF: dict[str, Task] = {model: task for task, names in MODELS.items() for model in names}
EMBEDDING_DIM: dict[str, int] = {EMBED_MODEL: 384}
ENGLISH_ONLY: frozenset[str] = frozenset({WHISPER_TINY_EN})
"""Speech models that transcribe English only."""
OPT_IN: frozenset[str] = frozenset({GENERATE_MODEL})
"""Models a node loads only when asked by name (`cortensor node --models ...`): a language
model costs more memory and start-up time than the rest together, so fleets choose which
nodes carry it."""
DEFAULT_MAX_TOKENS = 128
"""generate: new tokens per prompt when a job does not say."""
MAX_MAX_TOKENS = 512
"""generate: the most new tokens a job may ask for per prompt."""


def eligible_classes(spec: HwSpec) -> tuple[HwClass, ...]:
    """The hardware classes that may serve a job asking for `spec` (a class, a precision or any)."""
    if spec == "any":
        return HW_CLASSES
    if spec in HW_CLASSES:
        return tuple(c for c in HW_CLASSES if c == spec)
    return tuple(c for c in HW_CLASSES if PRECISION[c] == spec)
