"""From a staged export to the delivered file: symbolic axis names, optional fp16, external data for large
models, then validation (ONNX checker by path, ONNX Runtime loads it) and the comparison with the source."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from advisor.errors import UserError
from advisor.exporting.torch_export import Staged, first_line
from advisor.measure import compare_outputs

# protobuf cannot serialise a message over 2 GiB; keep 64 MiB of headroom for the graph itself
EXTERNAL_DATA_THRESHOLD_BYTES = 2**31 - 2**26
EXTERNAL_DATA_MIN_TENSOR_BYTES = 1024  # tensors smaller than this stay inline even in external-data mode
FP32_TOLERANCE = 1e-3  # relative to the largest reference value, as in advisor.measure.compare_outputs
FP16_TOLERANCE = 2e-2


def _dims(value: onnx.ValueInfoProto):
    return value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []


def normalise_axes(model: onnx.ModelProto, dynamic: dict[str, dict[int, str]],
                   used: dict[str, np.ndarray]) -> list[str]:
    """Name the dynamic axes as asked ("batch", "sequence") whatever the exporter called them (optimum's
    "batch_size", torch.export's "s31"), and pin other symbolic input axes to the size the export used, so the
    advisor later needs --input-shape only for the axes that are meant to vary. Returns notes."""
    notes = []
    renames: dict[str, str] = {}
    for value in model.graph.input:
        dims = _dims(value)
        wanted = dynamic.get(value.name, {})
        for axis, dim in enumerate(dims):
            symbolic = not dim.HasField("dim_value")
            if axis in wanted:
                if not symbolic:
                    notes.append(f"axis {axis} of input {value.name!r} was exported static ({dim.dim_value}), "
                                 f"not as {wanted[axis]!r}")
                elif dim.dim_param and dim.dim_param != wanted[axis]:
                    renames.setdefault(dim.dim_param, wanted[axis])
            elif symbolic and value.name in used and axis < used[value.name].ndim:
                dim.Clear()
                dim.dim_value = int(used[value.name].shape[axis])
    if renames:
        values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
        for value in values:
            for dim in _dims(value):
                if dim.HasField("dim_param") and dim.dim_param in renames:
                    dim.dim_param = renames[dim.dim_param]
    return notes


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so that each comes after the producers of its inputs (the fp16 converter appends the Cast
    nodes it inserts for kept fp32 inputs at the end, which the checker rejects)."""
    producer = {output: index for index, node in enumerate(graph.node) for output in node.output if output}
    waiting = [0] * len(graph.node)
    consumers: dict[int, list[int]] = collections.defaultdict(list)
    for index, node in enumerate(graph.node):
        for source in {producer[name] for name in node.input if name in producer and producer[name] != index}:
            waiting[index] += 1
            consumers[source].append(index)
    ready = collections.deque(index for index, count in enumerate(waiting) if count == 0)
    order = []
    while ready:
        index = ready.popleft()
        order.append(index)
        for consumer in consumers[index]:
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                ready.append(consumer)
    if len(order) != len(graph.node):
        return  # a cycle: leave the graph as it was and let the checker say what is wrong
    nodes = [graph.node[index] for index in order]
    del graph.node[:]
    graph.node.extend(nodes)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and arithmetic in float16, inputs and outputs kept float32 (Cast nodes at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # onnx shape inference refuses protos over 2 GB, so large models convert without it
    large = weight_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES // 2
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=large)
    topological_sort(converted.graph)
    return converted


def weight_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            total += next((int(e.value) for e in tensor.external_data if e.key == "length"), 0)
        elif tensor.raw_data:
            total += len(tensor.raw_data)
        else:
            total += int(np.prod(tensor.dims, dtype=np.int64)) * _itemsize(tensor.data_type)
    return total


def _itemsize(data_type: int) -> int:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 4


def save(model: onnx.ModelProto, output: Path, external_data: bool | None) -> bool:
    """Write the model; weights go to `<name>.data` beside it when asked or when the model is over 2 GB.
    Returns whether external data was used."""
    external = external_data if external_data is not None else weight_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES
    data_file = output.with_name(output.name + ".data")
    if data_file.exists():
        data_file.unlink()  # onnx appends to an existing data file; a stale one would be corrupted, not replaced
    if output.exists():
        output.unlink()
    onnx.save_model(model, str(output), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data_file.name, size_threshold=EXTERNAL_DATA_MIN_TENSOR_BYTES)
    if external and data_file.exists():
        # onnx creates the data file owner-only (0600); give it the model file's mode so that a container or
        # service running as another user can read the weights it can read the graph of
        data_file.chmod(output.stat().st_mode & 0o777)
    return external


def session(path: Path):
    """An ONNX Runtime CPU session on the file, or a UserError saying why it cannot load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise UserError(f"ONNX Runtime cannot load {path}: {first_line(error)}") from None


def check(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path))
    except Exception as error:
        raise UserError(f"the exported model {path} fails the ONNX checker: {first_line(error)}") from None


def compare(path: Path, staged: Staged, fp16: bool) -> tuple[float | None, float | None, list[str]]:
    """Run the file in ONNX Runtime on the source's inputs; max abs / rel error against the source's outputs."""
    runner = session(path)
    notes = []
    missing = [value.name for value in runner.get_inputs() if value.name not in staged.inputs]
    if missing:
        note = f"outputs not compared: the exported model takes inputs {missing} that the source was not run with"
        return None, None, [note]
    names = [value.name for value in runner.get_outputs() if value.name in staged.reference]
    if not names:
        return None, None, ["outputs not compared: no output of the exported model matches the source's outputs"]
    feeds = {value.name: staged.inputs[value.name] for value in runner.get_inputs()}
    try:
        produced = runner.run(names, feeds)
    except Exception as error:
        raise UserError(f"ONNX Runtime failed to run the exported model: {first_line(error)}") from None
    tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    result = compare_outputs(produced, [staged.reference[name] for name in names], tolerance)
    skipped = sorted(set(staged.reference) - set(names))
    if skipped:
        notes.append(f"source outputs not in the exported model, not compared: {skipped}")
    if not result.passed:
        notes.append(f"the exported model's outputs differ from the source's by up to {result.max_rel_error:.3g} "
                     f"(relative to the largest output value), above the expected {tolerance:g}")
    return result.max_abs_error, result.max_rel_error, notes


def finalize(staged: Staged, output: Path, options) -> tuple[float | None, float | None, list[str]]:
    """Post-process and write `output`, validate it, compare it with the source; (max abs, max rel, notes)."""
    model = onnx.load(str(staged.onnx_path))
    notes = normalise_axes(model, staged.dynamic_axes, staged.inputs)
    if options.fp16:
        model = to_fp16(model)
        notes.append("converted to float16 (inputs and outputs stay float32); fp16 is meant for GPU targets")
    if save(model, output, options.external_data):
        notes.append(f"weights stored as external data in {output.name}.data beside the model")
    del model
    check(output)
    max_abs, max_rel, more = compare(output, staged, options.fp16)
    return max_abs, max_rel, notes + more
