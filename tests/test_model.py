from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from advisor.errors import UserError
from advisor.feeds import make_feeds
from advisor.model import ModelSpec, analyze


def test_cnn_analysis(cnn_path):
    info = analyze(ModelSpec(cnn_path))
    assert info.batch_axis
    assert info.input_shapes == {"image": (1, 3, 64, 64)}
    # conv1: 16x64x64 outputs x 27 MACs; conv2: 32x32x32 outputs x 144 MACs; biases one FLOP per output
    conv = 2 * 16 * 64 * 64 * 27 + 16 * 64 * 64 + 2 * 32 * 32 * 32 * 144 + 32 * 32 * 32
    assert info.flops_by_class["conv"] == conv
    assert info.params == 16 * 27 + 16 + 32 * 144 + 32 + 10 * 32 + 10
    assert info.op_histogram["Conv"] == 2
    assert not info.uncounted_ops
    assert info.shapes_at(4) == {"image": (4, 3, 64, 64)}


def test_encoder_needs_sequence_shape(encoder_path):
    with pytest.raises(UserError, match=r"input 'input_ids' has dynamic axis 1 \('sequence'\).*--input-shape"):
        analyze(ModelSpec(encoder_path))
    info = analyze(ModelSpec(encoder_path, {"input_ids": (1, 32), "attention_mask": (1, 32)}))
    assert info.input_shapes["input_ids"] == (1, 32)
    assert info.vocab_limits == {"input_ids": 1000}
    assert info.flops_by_class["matmul"] == 4 * 2 * 32 * 64 * 64 + 2 * 2 * 32 * 32 * 64
    feeds = make_feeds(info, 2)
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].max() < 1000
    assert (feeds["attention_mask"] == 1).all() and feeds["attention_mask"].shape == (2, 32)


@pytest.mark.parametrize("shapes, message", [
    ({"nope": (1, 2)}, "unknown input 'nope'"),
    ({"input_ids": (1, 2, 3), "attention_mask": (1, 32)}, "has rank 3"),
])
def test_bad_shapes(encoder_path, shapes, message):
    with pytest.raises(UserError, match=message):
        analyze(ModelSpec(encoder_path, shapes))


def test_fixed_axis_conflict(cnn_path):
    with pytest.raises(UserError, match="fixes it at 64"):
        analyze(ModelSpec(cnn_path, {"image": (1, 3, 32, 32)}))


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffthis is not protobuf" * 10)
    text = tmp_path / "text.onnx"
    text.write_text("hello world")
    for path, message in [(tmp_path / "missing.onnx", "not found"), (tmp_path, "is a directory"),
                          (empty, "is empty"), (junk, "not a valid ONNX model"), (text, "ONNX")]:
        with pytest.raises(UserError, match=message):
            analyze(ModelSpec(path))


def test_truncated_model(cnn_path, tmp_path):
    data = cnn_path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError):
        analyze(ModelSpec(truncated))


def test_checker_failure(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UserError, match="fails the ONNX checker"):
        analyze(ModelSpec(path))


def _external_model(tmp_path: Path, location: str) -> Path:
    model = models.tiny_mlp()
    for init in model.graph.initializer:
        if init.name == "w1":
            init.ClearField("raw_data")
            init.ClearField("float_data")
            init.data_location = TensorProto.EXTERNAL
            entry = init.external_data.add()
            entry.key, entry.value = "location", location
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "../outside.bin"])
def test_external_data_outside_folder_refused(tmp_path, location):
    path = _external_model(tmp_path, location)
    with pytest.raises(UserError, match="refusing external data"):
        analyze(ModelSpec(path))


def test_external_data_symlink_escape_refused(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 64 * 128 * 4)
    (path.parent / "weights.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(UserError, match="outside the model folder"):
        analyze(ModelSpec(path))


def test_huge_input_refused_before_allocation(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000000, 1000000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000000, 1000000])])
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UserError, match="refusing to allocate"):
        analyze(ModelSpec(path))


def test_initializer_inputs_are_not_fed(tmp_path):
    model = models.tiny_mlp()
    model.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [64, 128]))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    info = analyze(ModelSpec(path))
    assert [s.name for s in info.inputs] == ["x"]
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (64, 128)


def test_analysis_leaves_no_debug_file_in_the_working_directory(tmp_path, monkeypatch):
    """ONNX Runtime's symbolic shape inference dumps sym_shape_infer_temp.onnx into the cwd when it gives up (here
    on an operator from an unknown domain); analysis must not litter the user's folder with it."""
    from onnx import TensorProto, helper

    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "model" / "custom.onnx"
    path.parent.mkdir()
    onnx.save(model, path)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    analyze(ModelSpec(path, {}))
    assert list(work.iterdir()) == []
