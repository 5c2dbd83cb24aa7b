"""One comparator per task: does a replica's output agree with another's?"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cortensor.comparators import classify, embed, transcribe

Comparator = Callable[[Any, str, Any, str], bool]
"""(output_a, precision_a, output_b, precision_b) -> whether the two outputs agree."""

COMPARATORS: dict[str, Comparator] = {
    "embed": embed.agree,
    "classify": classify.agree,
    "transcribe": transcribe.agree,
}
