"""Small real ONNX models built with onnx.helper, for the tests and the bundled example.

`python tests/models.py examples/` regenerates examples/tiny_cnn.onnx (deterministic).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _weight(rng, name: str, shape, scale: float = 0.1) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="advisor-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_cnn(size: int = 64, channels: int = 16, seed: int = 0) -> onnx.ModelProto:
    """Conv-ReLU-Conv-ReLU-pool-Gemm image classifier with a symbolic batch axis."""
    rng = np.random.default_rng(seed)
    inits = [
        _weight(rng, "conv1.w", (channels, 3, 3, 3)), _weight(rng, "conv1.b", (channels,)),
        _weight(rng, "conv2.w", (channels * 2, channels, 3, 3)), _weight(rng, "conv2.b", (channels * 2,)),
        _weight(rng, "fc.w", (10, channels * 2)), _weight(rng, "fc.b", (10,)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _model(graph)


def tiny_mlp(features: int = 64, hidden: int = 128, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "w1", (features, hidden)), _weight(rng, "b1", (hidden,)),
             _weight(rng, "w2", (hidden, 8)), _weight(rng, "b2", (8,))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
        helper.make_node("Relu", ["hb"], ["hr"], name="relu"),
        helper.make_node("MatMul", ["hr", "w2"], ["o"], name="mm2"),
        helper.make_node("Add", ["o", "b2"], ["y"], name="add2"),
    ]
    graph = helper.make_graph(nodes, "tiny_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits)
    return _model(graph)


def tiny_encoder(vocab: int = 1000, hidden: int = 64, seed: int = 0) -> onnx.ModelProto:
    """One self-attention block over token embeddings: int64 ids + mask inputs, symbolic batch and sequence."""
    rng = np.random.default_rng(seed)
    inits = [
        _weight(rng, "embed", (vocab, hidden)), _weight(rng, "wq", (hidden, hidden)),
        _weight(rng, "wk", (hidden, hidden)), _weight(rng, "wv", (hidden, hidden)),
        _weight(rng, "wo", (hidden, hidden)),
        numpy_helper.from_array(np.array([1.0 / np.sqrt(hidden)], dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([-10000.0], dtype=np.float32), "neg"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["x"], name="embedding"),
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale"),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], name="mask_cast", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis1"], ["mask3"], name="mask_unsqueeze"),
        helper.make_node("Sub", ["one", "mask3"], ["inv"], name="mask_invert"),
        helper.make_node("Mul", ["inv", "neg"], ["bias"], name="mask_bias"),
        helper.make_node("Add", ["scaled", "bias"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="o_proj"),
        helper.make_node("Add", ["o", "x"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "one_h", "zero_h"], ["hidden_states"], name="ln", axis=-1),
    ]
    inits += [numpy_helper.from_array(np.ones(hidden, np.float32), "one_h"),
              numpy_helper.from_array(np.zeros(hidden, np.float32), "zero_h")]
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, ["batch", "sequence", hidden])],
        inits,
    )
    return _model(graph)


def cancelling_cnn(size: int = 32, channels: int = 32, depth: int = 4, delta: float = 1e-4,
                   seed: int = 0) -> onnx.ModelProto:
    """A conv stack whose output is the difference of two nearly equal convolutions (weights W and W(1+delta)).

    The cancellation magnifies fp32 rounding: ONNX Runtime's optimised session (NCHWc convolutions) disagrees
    with its unoptimised one by ~5e-3 relative, beyond a fixed 1e-3 tolerance, as deep real networks do.
    """
    rng = np.random.default_rng(seed)
    head = (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32)
    inits = [_weight(rng, "stem.w", (channels, 3, 3, 3)), numpy_helper.from_array(head, "head_a.w"),
             numpy_helper.from_array((head * (1 + delta)).astype(np.float32), "head_b.w")]
    nodes = [helper.make_node("Conv", ["image", "stem.w"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["stem"], ["x0"], name="stem_relu")]
    for i in range(depth):
        inits += [_weight(rng, f"conv{i}.w", (channels, channels, 3, 3), 0.08), _weight(rng, f"conv{i}.b", (channels,))]
        nodes += [helper.make_node("Conv", [f"x{i}", f"conv{i}.w", f"conv{i}.b"], [f"c{i}"], name=f"conv{i}",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}"], name=f"relu{i}")]
    nodes += [helper.make_node("Conv", [f"x{depth}", "head_a.w"], ["head_a"], name="head_a", pads=[1, 1, 1, 1]),
              helper.make_node("Conv", [f"x{depth}", "head_b.w"], ["head_b"], name="head_b", pads=[1, 1, 1, 1]),
              helper.make_node("Sub", ["head_a", "head_b"], ["difference"], name="difference")]
    graph = helper.make_graph(
        nodes, "cancelling_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("difference", TensorProto.FLOAT, ["batch", channels, size, size])], inits)
    return _model(graph)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "examples")
    print(save(tiny_cnn(), out / "tiny_cnn.onnx"))
