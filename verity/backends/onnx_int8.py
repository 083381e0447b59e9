"""int8 weights with each token's activations quantized on its own.

ONNX Runtime's dynamic quantization gives a MatMul's whole input one scale, so the
few tokens with huge activations (``[CLS]`` and ``[SEP]`` in BERT-like models) set
the step for every other token of the batch. Here each token (each row of the
input) gets its own scale and zero point, computed at run time, and the weights
their own scale per output column:

    x ~= s * (q - z)      q in 0..254, one s and z per token
    x @ W ~= s * (q @ Wq * w - z * sum(Wq * w))

The rows are quantized by ``QuantizeLinear`` (one scale per row), the integer
product runs in ONNX Runtime's ``MatMulIntegerToFloat`` (the u8 x s8 kernels of
its dynamic quantization), and the zero-point term is a constant per column. On
all-MiniLM-L6-v2 the vectors' distance from float32 shrinks about 4.5-fold (SQuAD
paragraphs: cosine 0.9989 against 0.9952 with a scale per batch) at about the
same speed, and a text's vector no longer depends on the other texts of its
batch (docs/BENCHMARKS.md, "int8 with a scale per token").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# 254 steps, not 255: round(x/s) + z then stays within 0..254 (up to 254.5 before rounding)
# without leaning on QuantizeLinear's saturation at 255.
_STEPS = 254


def quantize_per_token(source: Path, target: Path, *, reduce_range: bool) -> int:
    """Write ``source`` (a float32 ONNX model) to ``target`` with its weight MatMuls in int8.

    Every ``MatMul`` whose second input is a constant 2-D matrix is replaced; others
    (attention's products of two activations) stay float32. ``reduce_range`` keeps
    the weights to 7 bits, for CPUs without 8-bit dot-product instructions, whose
    u8 x s8 kernels can saturate. Returns how many MatMuls were quantized.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    limit = 63 if reduce_range else 127
    shared = [
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "ptq/one"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "ptq/zero"),
        numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "ptq/eps"),
        numpy_helper.from_array(np.array(1.0 / _STEPS, dtype=np.float32), "ptq/step"),
        numpy_helper.from_array(np.array(0, dtype=np.uint8), "ptq/zp"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "ptq/axis1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "ptq/start"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "ptq/last"),
    ]
    added: list[onnx.TensorProto] = []
    quantized: dict[str, str] = {}  # float weight -> the prefix of its int8 copy
    inputs: dict[str, str] = {}  # activation -> the prefix of its quantized form
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2:
            nodes.append(node)
            continue
        if weight.name not in quantized:
            quantized[weight.name] = f"ptq/w{len(quantized)}"
            added += _int8_weight(numpy_helper.to_array(weight), quantized[weight.name], limit)
        x = node.input[0]
        if x not in inputs:  # quantized once for all its MatMuls (attention's query, key, value)
            inputs[x] = f"ptq/x{len(inputs)}"
            nodes += _quantize_rows(x, inputs[x], columns=weight.dims[0])
        o = f"ptq/y{index}"
        added.append(numpy_helper.from_array(np.array([weight.dims[1]], dtype=np.int64), f"{o}/n"))
        nodes += _integer_product(node, x=inputs[x], w=quantized[weight.name], o=o)
    if not quantized:
        raise ValueError("the model has no MatMul with constant weights to quantize")
    used = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used or t.name not in quantized]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + shared + added)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))
    return len(quantized)


def _quantize_rows(x: str, p: str, *, columns: int) -> list[Any]:
    """Nodes quantizing ``x``, as rows of ``columns``, to ``{p}/q``: per row a scale ``{p}/s``
    and a zero point ``-{p}/negz`` (both as columns); ``{p}/lead`` is x's shape but the last."""
    from onnx import TensorProto, helper, numpy_helper

    return [
        helper.make_node("Constant", [], [f"{p}/cols"], value=numpy_helper.from_array(
            np.array([-1, columns], dtype=np.int64))),
        helper.make_node("Reshape", [x, f"{p}/cols"], [f"{p}/x2"]),
        helper.make_node("Shape", [x], [f"{p}/shape"]),
        helper.make_node("Slice", [f"{p}/shape", "ptq/start", "ptq/last"], [f"{p}/lead"]),
        helper.make_node("ReduceMax", [f"{p}/x2"], [f"{p}/max0"], axes=[-1], keepdims=1),
        helper.make_node("ReduceMin", [f"{p}/x2"], [f"{p}/min0"], axes=[-1], keepdims=1),
        helper.make_node("Max", [f"{p}/max0", "ptq/zero"], [f"{p}/max"]),
        helper.make_node("Min", [f"{p}/min0", "ptq/zero"], [f"{p}/min"]),
        helper.make_node("Sub", [f"{p}/max", f"{p}/min"], [f"{p}/range"]),
        helper.make_node("Mul", [f"{p}/range", "ptq/step"], [f"{p}/s0"]),
        helper.make_node("Max", [f"{p}/s0", "ptq/eps"], [f"{p}/s"]),
        helper.make_node("Div", [f"{p}/min", f"{p}/s"], [f"{p}/zf"]),
        helper.make_node("Round", [f"{p}/zf"], [f"{p}/negz"]),
        helper.make_node("Neg", [f"{p}/negz"], [f"{p}/z"]),
        helper.make_node("Cast", [f"{p}/z"], [f"{p}/zu"], to=TensorProto.UINT8),
        helper.make_node("Squeeze", [f"{p}/s", "ptq/axis1"], [f"{p}/s1"]),
        helper.make_node("Squeeze", [f"{p}/zu", "ptq/axis1"], [f"{p}/z1"]),
        helper.make_node("QuantizeLinear", [f"{p}/x2", f"{p}/s1", f"{p}/z1"], [f"{p}/q"], axis=0),
    ]


def _int8_weight(matrix: np.ndarray, w: str, limit: int) -> list[Any]:
    """``{w}/q`` (int8, one scale ``{w}/scale`` per column) and ``{w}/column``, its column sums."""
    from onnx import numpy_helper

    matrix = matrix.astype(np.float32)
    scale = np.maximum(np.abs(matrix).max(axis=0), 1e-12) / limit
    integers = np.clip(np.round(matrix / scale), -limit, limit).astype(np.int8)
    column = (integers.astype(np.float32).sum(axis=0) * scale).astype(np.float32)
    return [numpy_helper.from_array(integers, f"{w}/q"),
            numpy_helper.from_array(scale.astype(np.float32), f"{w}/scale"),
            numpy_helper.from_array(column, f"{w}/column")]


def _integer_product(node: Any, *, x: str, w: str, o: str) -> list[Any]:
    """Nodes computing ``node``'s output from the quantized input ``x`` and weight ``w``."""
    from onnx import helper

    return [
        helper.make_node("MatMulIntegerToFloat",
                         [f"{x}/q", f"{w}/q", "ptq/one", f"{w}/scale", "ptq/zp"],
                         [f"{o}/yq"], domain="com.microsoft"),
        helper.make_node("Mul", [f"{x}/negz", f"{w}/column"], [f"{o}/zterm"]),
        helper.make_node("Add", [f"{o}/yq", f"{o}/zterm"], [f"{o}/y0"]),
        helper.make_node("Mul", [f"{o}/y0", f"{x}/s"], [f"{o}/rows"]),
        helper.make_node("Concat", [f"{x}/lead", f"{o}/n"], [f"{o}/shape"], axis=0),
        helper.make_node("Reshape", [f"{o}/rows", f"{o}/shape"], [node.output[0]],
                         name=node.name),
    ]
