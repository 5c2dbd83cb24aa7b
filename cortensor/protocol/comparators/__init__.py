"""One comparator per task: does a replica's output agree with another's?"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cortensor.protocol.comparators import classify, embed, generate, transcribe

Comparator = Callable[[Any, str, Any, str], bool]
"""(output_a, precision_a, output_b, precision_b) -> whether the two outputs agree.

A precision is a label such as "int8", or "int8/int8-avx2" for another build of the
same precision (InferenceResult.precision_label)."""

COMPARATORS: dict[str, Comparator] = {
    "embed": embed.agree,
    "classify": classify.agree,
    "transcribe": transcribe.agree,
    "generate": generate.agree,
}
