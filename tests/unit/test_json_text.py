"""The ledger's JSON for jsonb (store.json_text): what the standard library would store,
faster; the values PostgreSQL must refuse still reach it as they are."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cortensor.adapters.ledger.store import json_text

VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(VALUES)
def test_json_text_reads_back_as_the_standard_librarys(value: Any) -> None:
    assert _same(json.loads(json_text(value)), json.loads(json.dumps(value)))


def test_non_finite_numbers_and_lone_surrogates_are_written_as_the_standard_library_does() -> None:
    for value in ([[1.0, math.nan]], {"x": math.inf}, ["\udc80"]):
        assert json_text(value) == json.dumps(value)


def test_an_embedding_is_written_compactly() -> None:
    text = json_text([[0.25, -0.5]])
    assert json.loads(text) == [[0.25, -0.5]]
    assert "NaN" not in text
