"""int8 quantization whose answer for a text does not depend on the texts batched with it.

Every MatMul with a weight matrix (the linear layers) becomes an int8 matrix product:
weights per output channel, symmetric, quantized once; activations per token (per row),
quantized as the graph runs. Each row is mapped onto [0, 1] by its own minimum and
maximum, coded with the fixed step 1/255, multiplied in integers and mapped back:

    x @ W = span * (((x - low) / span) @ W) + low * colsum(W),   span = high - low

Every step reads one row only, so a text's vector is the same alone and in any batch,
with any padding: bit for bit, measured. Dynamic quantization (Optimum's and ONNX
Runtime's) takes one activation scale over the whole batch instead, and static
quantization (one calibrated scale per tensor) loses too much fidelity; the figures
are in docs/design.md. The attention products (activations times activations), the word
embeddings and everything else stay fp32.

onnx and numpy are imported inside `quantize_per_token`, as in tools.prepare.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import onnx
    from numpy.typing import NDArray

Isa = Literal["avx512_vnni", "avx2"]

_STEP = "per_token.step"
_ZERO = "per_token.zero"
_EPSILON = "per_token.epsilon"
_LAST_AXIS = "per_token.last_axis"


def quantize_per_token(source: Path, target: Path, isa: Isa) -> None:
    """Write to `target` the int8 graph of the fp32 ONNX graph `source`.

    `isa` "avx512_vnni" stores signed weights (VNNI multiplies uint8 by int8); "avx2"
    stores the same codes shifted to uint8 with zero point 128, since AVX2's uint8 x int8
    instruction saturates its 16-bit pair sums. The integer products are the same, so
    the two graphs give the same vectors.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    weights = {init.name: init for init in model.graph.initializer}
    initializers = [
        numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), _STEP),
        numpy_helper.from_array(np.array(0, dtype=np.uint8), _ZERO),
        # A constant row has no span: it keeps a tiny one rather than dividing by zero.
        numpy_helper.from_array(np.array(1e-12, dtype=np.float32), _EPSILON),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), _LAST_AXIS),
    ]
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
            linear, tensors = _linear(node, w, f"per_token.{len(nodes)}", isa)
            nodes += linear
            initializers += tensors
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend([*kept, *initializers])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


def _linear(
    node: onnx.NodeProto, w: NDArray[np.float32], prefix: str, isa: Isa
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes that compute `node` (x @ w, w of shape (K, N)) in int8, and their weights."""
    import numpy as np
    from onnx import helper, numpy_helper

    scale = np.abs(w).max(axis=0) / 127
    scale[scale == 0] = 1.0
    codes = np.clip(np.round(w / scale), -127, 127)
    # Each dequantized column's sum: the rows' offsets (low) multiply it.
    colsum = (codes * scale).sum(axis=0)

    def name(part: str) -> str:
        return f"{prefix}.{part}"

    tensors = [
        numpy_helper.from_array(scale.astype(np.float32), name("w_scale")),
        numpy_helper.from_array(colsum.astype(np.float32), name("colsum")),
    ]
    if isa == "avx512_vnni":
        tensors.append(numpy_helper.from_array(codes.astype(np.int8), name("w")))
        zero_point = []
    else:
        tensors.append(numpy_helper.from_array((codes + 128).astype(np.uint8), name("w")))
        tensors.append(numpy_helper.from_array(np.full(w.shape[1], 128, np.uint8), name("w_zero")))
        zero_point = [name("w_zero")]
    x = node.input[0]
    nodes = [
        helper.make_node("ReduceMin", [x, _LAST_AXIS], [name("low")]),
        helper.make_node("ReduceMax", [x, _LAST_AXIS], [name("high")]),
        helper.make_node("Sub", [name("high"), name("low")], [name("range")]),
        helper.make_node("Max", [name("range"), _EPSILON], [name("span")]),
        helper.make_node("Sub", [x, name("low")], [name("shifted")]),
        helper.make_node("Div", [name("shifted"), name("span")], [name("unit")]),
        helper.make_node("QuantizeLinear", [name("unit"), _STEP, _ZERO], [name("codes")]),
        helper.make_node(
            "MatMulIntegerToFloat",
            [name("codes"), name("w"), _STEP, name("w_scale"), _ZERO, *zero_point],
            [name("product")],
            domain="com.microsoft",
        ),
        helper.make_node("Mul", [name("product"), name("span")], [name("scaled")]),
        helper.make_node("Mul", [name("low"), name("colsum")], [name("offset")]),
        helper.make_node(
            "Add", [name("scaled"), name("offset")], list(node.output), name=node.name
        ),
    ]
    return nodes, tensors
