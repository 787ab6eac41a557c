"""Work per ONNX node: floating-point operations and bytes moved, from inferred shapes.

Counted: MatMul, Gemm, Conv, ConvTranspose, attention ops (ONNX Attention, com.microsoft Attention and
MultiHeadAttention), pooling, normalisation, reductions, softmax and elementwise ops; data-movement ops
(Reshape, Transpose, Gather, Concat, ...) count bytes and zero FLOPs. Anything else, or a node whose shapes
could not be inferred, is reported as not counted rather than guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

Shape = tuple[int, ...]

OP_CLASSES: dict[str, tuple[str, ...]] = {
    "matmul": ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "Einsum", "FusedMatMul", "DynamicQuantizeMatMul"),
    "conv": ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "FusedConv"),
    "attention": ("Attention", "MultiHeadAttention", "GroupQueryAttention"),
    "normalization": (
        "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
        "SkipLayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "LpNormalization",
    ),
    "pooling": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"),
    "reduction": ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "Softmax",
                  "LogSoftmax", "ArgMax", "ArgMin", "TopK", "CumSum"),
    "data_movement": (
        "Reshape", "Transpose", "Gather", "GatherElements", "GatherND", "Concat", "Slice", "Split", "Squeeze",
        "Unsqueeze", "Flatten", "Expand", "Tile", "Pad", "Identity", "Shape", "Size", "ConstantOfShape", "Constant",
        "Cast", "Range", "Resize", "DepthToSpace", "SpaceToDepth", "ScatterND", "ScatterElements", "Where",
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "NonZero", "OneHot", "Trilu",
    ),
}
ELEMENTWISE_FLOPS_PER_ELEMENT: dict[str, int] = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Relu": 1, "LeakyRelu": 2, "PRelu": 2, "Clip": 2, "Max": 1, "Min": 1,
    "Neg": 1, "Abs": 1, "Sqrt": 4, "Reciprocal": 1, "Pow": 8, "Exp": 8, "Log": 8, "Tanh": 8, "Sigmoid": 4,
    "Erf": 8, "Gelu": 10, "FastGelu": 10, "BiasGelu": 11, "HardSigmoid": 3, "HardSwish": 4, "Swish": 5,
    "Softplus": 8, "Elu": 8, "Selu": 8, "Equal": 1, "Less": 1, "Greater": 1, "Not": 1, "And": 1, "Or": 1,
    "Floor": 1, "Ceil": 1, "Round": 1, "Sin": 8, "Cos": 8, "Mish": 12, "Sign": 1, "Mod": 2, "BiasAdd": 1,
}
_CLASS_OF = {op: cls for cls, ops in OP_CLASSES.items() for op in ops}
_CLASS_OF.update({op: "elementwise" for op in ELEMENTWISE_FLOPS_PER_ELEMENT})


def op_class(op_type: str) -> str:
    """The operator class used for the operator mix and the per-class time split."""
    return _CLASS_OF.get(op_type, "other")


@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str
    op_class: str
    flops: int
    bytes: int
    counted: bool


def _numel(shape: Shape | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _flops(node: onnx.NodeProto, ins: list[Shape | None], outs: list[Shape | None]) -> int | None:
    """FLOPs of one node, or None when this op or its shapes are not understood."""
    op = node.op_type
    out = outs[0] if outs else None
    if op in ("MatMul", "MatMulInteger", "FusedMatMul") and ins and ins[0] and out is not None:
        k = ins[0][-1] if len(ins[0]) > 1 else ins[0][0]
        return 2 * _numel(out) * k
    if op == "Gemm" and ins and ins[0] and out is not None:
        k = ins[0][0] if _attr(node, "transA", 0) else ins[0][-1]
        return 2 * _numel(out) * k + (_numel(out) if len(ins) > 2 else 0)
    if op in ("Conv", "ConvInteger", "FusedConv") and len(ins) > 1 and ins[1] and out is not None:
        weight = ins[1]  # (C_out, C_in/group, k...)
        per_output = math.prod(weight[1:])
        return 2 * _numel(out) * per_output + (_numel(out) if len(ins) > 2 else 0)
    if op == "ConvTranspose" and len(ins) > 1 and ins[0] and ins[1]:
        weight = ins[1]  # (C_in, C_out/group, k...)
        return 2 * _numel(ins[0]) * math.prod(weight[1:])
    if op in ("Attention", "MultiHeadAttention", "GroupQueryAttention") and ins and ins[0] and len(ins[0]) == 3:
        batch, seq, hidden = ins[0]
        projections = 2 * batch * seq * hidden * ins[1][-1] if op == "Attention" and len(ins) > 1 and ins[1] else 0
        return projections + 4 * batch * seq * seq * hidden + 5 * batch * seq * seq
    if op in ("MaxPool", "AveragePool", "LpPool") and out is not None:
        return _numel(out) * math.prod(_attr(node, "kernel_shape", [1]))
    if op in ("GlobalAveragePool", "GlobalMaxPool") and ins and ins[0]:
        return _numel(ins[0])
    if op_class(op) in ("normalization", "reduction") and ins and ins[0]:
        return 5 * _numel(ins[0])
    if op in ELEMENTWISE_FLOPS_PER_ELEMENT and out is not None:
        return ELEMENTWISE_FLOPS_PER_ELEMENT[op] * _numel(out)
    if op_class(op) == "data_movement":
        return 0
    return None


def node_cost(node: onnx.NodeProto, shapes: dict[str, Shape], itemsizes: dict[str, int]) -> NodeCost:
    ins = [shapes.get(name) if name else None for name in node.input]
    outs = [shapes.get(name) for name in node.output]
    known = bool(outs) and all(shape is not None for shape in outs)
    flops = _flops(node, ins, outs) if known else None
    moved = sum(_numel(shapes.get(n)) * itemsizes.get(n, 4) for n in list(node.input) + list(node.output) if n)
    return NodeCost(
        name=node.name or node.output[0] if node.output else node.op_type,
        op_type=node.op_type,
        op_class=op_class(node.op_type),
        flops=int(flops or 0),
        bytes=int(moved),
        counted=flops is not None,
    )
