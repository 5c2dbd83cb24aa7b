"""Precision labels as the comparators see them."""

from __future__ import annotations


def pair(label_a: str, label_b: str) -> tuple[frozenset[str], bool]:
    """The precisions behind two labels ("int8", "int8/int8-avx2"), and whether the two
    are different builds of one precision.

    Different builds of int8 (graphs quantized for VNNI and for AVX2, or CTranslate2's
    int8 on a CPU and on a GPU) round differently: they agree with each other about as
    closely as int8 agrees with fp32, not as closely as one build agrees with itself.
    """
    precision_a, _, build_a = label_a.partition("/")
    precision_b, _, build_b = label_b.partition("/")
    return frozenset({precision_a, precision_b}), (
        precision_a == precision_b and build_a != build_b
    )
