"""Model loading, validation and analysis: ModelSpec -> ModelInfo.

Loading refuses what should not be run (non-ONNX bytes, checker failures, external data pointing outside the
model's folder, absurd input sizes) with a UserError, before anything is allocated or executed.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from advisor.checksums import file_sha256
from advisor.errors import UserError
from advisor.opcost import NodeCost, node_cost

MAX_INPUT_ELEMENTS = 2**31  # one input larger than this (8 GiB of fp32) is refused before allocation
MAX_MODEL_FLOPS = 10**15  # a single inference beyond a petaFLOP is not something this tool can measure


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: a model file and concrete shapes for its dynamic inputs."""

    path: Path
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int | str, ...]  # ints for fixed axes, the axis name (or "?") for symbolic ones

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ModelInfo:
    """Everything the later stages need to know about the model, computed once."""

    path: Path
    sha256: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    params: int
    weight_bytes: int
    flops: int  # at batch size 1 with the user's shapes
    bytes_moved: int
    op_histogram: dict[str, int]
    flops_by_class: dict[str, int]
    bytes_by_class: dict[str, int]
    uncounted_ops: dict[str, int]  # op type -> nodes whose FLOPs could not be counted
    batch_axis: bool  # every input has a symbolic leading axis that the batch size fills
    input_shapes: dict[str, tuple[int, ...]]  # concrete shapes at batch size 1
    vocab_limits: dict[str, int]  # integer inputs that index an embedding table -> table size
    node_costs: tuple[NodeCost, ...] = ()

    def shapes_at(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes for one batch size (only the symbolic leading axis changes)."""
        if batch_size != 1 and not self.batch_axis:
            raise UserError(f"the model has a fixed batch size; it cannot be run at batch size {batch_size}")
        return {name: (batch_size, *shape[1:]) if self.batch_axis else shape
                for name, shape in self.input_shapes.items()}

    def summary_dict(self) -> dict:
        return {
            "path": str(self.path), "sha256": self.sha256, "opset": self.opset, "flops": self.flops,
            "bytes_moved": self.bytes_moved, "params": self.params, "weight_bytes": self.weight_bytes,
            "inputs": [spec.to_dict() for spec in self.inputs], "outputs": [spec.to_dict() for spec in self.outputs],
            "batch_axis": self.batch_axis, "op_histogram": self.op_histogram, "flops_by_class": self.flops_by_class,
            "bytes_by_class": self.bytes_by_class, "uncounted_ops": self.uncounted_ops,
        }


def _np_dtype(elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower()


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dims: list[int | str] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or "?")
    return TensorSpec(value.name, _np_dtype(tensor_type.elem_type), tuple(dims))


def external_data_locations(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(tensor name, location as written in the file) for every tensor stored outside the model file."""
    return [(tensor.name, next((entry.value for entry in tensor.external_data if entry.key == "location"), ""))
            for tensor in onnx.external_data_helper._get_all_tensors(model)
            if tensor.data_location == TensorProto.EXTERNAL]


def _check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Refuse external-data locations that leave the model's folder (absolute, `..`, or via a symlink)."""
    root = folder.resolve()
    for name, location in external_data_locations(model):
        if not location or os.path.isabs(location) or Path(location).drive:
            raise UserError(f"refusing external data {location!r} of tensor {name!r}: path is not relative")
        target = (folder / location).resolve()
        if root not in target.parents:
            raise UserError(
                f"refusing external data {location!r} of tensor {name!r}: it points outside the model folder"
            )
        if not target.is_file():
            raise UserError(f"external data file {location!r} of tensor {name!r} is missing")


def load_model(path: Path) -> onnx.ModelProto:
    """Read and validate an ONNX file; every failure is a one-line UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not an ONNX file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError, RuntimeWarning or ValueError depending on the bytes
        raise UserError(f"{path} is not a valid ONNX model ({type(error).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise UserError(f"{path} is not a valid ONNX model (no graph)")
    _check_external_data(model, path.parent)
    try:
        onnx.checker.check_model(str(path))
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} fails the ONNX checker: {first_line[:300]}") from None
    if external_data_locations(model):
        onnx.load_external_data_for_model(model, str(path.parent))
    return model


def _resolve_input_shapes(
    inputs: tuple[TensorSpec, ...], overrides: dict[str, tuple[int, ...]]
) -> tuple[dict[str, tuple[int, ...]], bool]:
    """Concrete shapes at batch 1, and whether a symbolic leading axis is the batch axis for every input."""
    names = {spec.name for spec in inputs}
    for name in overrides:
        if name not in names:
            raise UserError(f"--input-shape names unknown input {name!r}; the model's inputs are {sorted(names)}")
    shapes: dict[str, tuple[int, ...]] = {}
    batch_axes = []
    for spec in inputs:
        given = overrides.get(spec.name)
        if given is not None and len(given) != len(spec.shape):
            raise UserError(
                f"--input-shape for {spec.name!r} has rank {len(given)}, the model's input has rank "
                f"{len(spec.shape)} {list(spec.shape)}"
            )
        leading_symbolic = bool(spec.shape) and isinstance(spec.shape[0], str)
        batch_axes.append(leading_symbolic)
        resolved = []
        for axis, dim in enumerate(spec.shape):
            if given is not None:
                if isinstance(dim, int) and given[axis] != dim:
                    raise UserError(
                        f"--input-shape for {spec.name!r} sets axis {axis} to {given[axis]}, but the model fixes it "
                        f"at {dim}"
                    )
                resolved.append(1 if axis == 0 and leading_symbolic else given[axis])
            elif isinstance(dim, int):
                resolved.append(dim)
            elif axis == 0:
                resolved.append(1)  # the batch axis, filled per measured batch size
            else:
                raise UserError(
                    f"input {spec.name!r} has dynamic axis {axis} ({dim!r}) in shape {list(spec.shape)}: "
                    f"pass --input-shape {spec.name}=" + ",".join(str(d) if isinstance(d, int) else
                                                                 ("1" if i == 0 else "N")
                                                                 for i, d in enumerate(spec.shape))
                )
        shapes[spec.name] = tuple(resolved)
        if math.prod(resolved) > MAX_INPUT_ELEMENTS:
            raise UserError(
                f"input {spec.name!r} would have {math.prod(resolved):,} elements at batch size 1; refusing to "
                f"allocate more than {MAX_INPUT_ELEMENTS:,}"
            )
    return shapes, bool(batch_axes) and all(batch_axes)


def _vocab_limits(model: onnx.ModelProto, integer_inputs: set[str]) -> dict[str, int]:
    """Integer inputs that feed a Gather on an initializer (an embedding table) and that table's row count."""
    init_rows = {init.name: init.dims[0] for init in model.graph.initializer if init.dims}
    limits: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in integer_inputs:
            rows = init_rows.get(node.input[0])
            if rows:
                limits[node.input[1]] = min(rows, limits.get(node.input[1], rows))
    return limits


SYMBOLIC_DEBUG_DUMP = ("sym_shape_infer_temp.onnx", "sym_shape_infer_temp.onnx.data")


@contextlib.contextmanager
def _no_debug_dump():
    """ONNX Runtime's symbolic shape inference saves `sym_shape_infer_temp.onnx` into the current directory when
    it cannot infer every shape: remove what it left there, never a file that was there before."""
    existing = {name for name in SYMBOLIC_DEBUG_DUMP if os.path.exists(name)}
    try:
        yield
    finally:
        for name in set(SYMBOLIC_DEBUG_DUMP) - existing:
            with contextlib.suppress(OSError):
                os.remove(name)


def _static_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]):
    """Shapes and element sizes of every value, inferred with the concrete input shapes."""
    static = onnx.ModelProto()
    static.CopyFrom(model)
    for value in static.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[value.name]):
                dim.Clear()
                dim.dim_value = size
    # ONNX Runtime's symbolic inference follows shapes through Shape/Reshape chains (exported transformers) where
    # onnx's own stops; both are best effort: nodes left without shapes are reported as not counted
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with _no_debug_dump():
            static = SymbolicShapeInference.infer_shapes(static, auto_merge=True)
    except Exception:
        try:
            static = onnx.shape_inference.infer_shapes(static, data_prop=True)
        except Exception:
            pass
    shapes: dict[str, tuple[int, ...]] = {}
    itemsizes: dict[str, int] = {}
    values = list(static.graph.value_info) + list(static.graph.input) + list(static.graph.output)
    for value in values:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        if all(d >= 0 for d in dims):
            shapes[value.name] = tuple(dims)
            itemsizes[value.name] = _itemsize(tensor_type.elem_type)
    for init in static.graph.initializer:
        shapes[init.name] = tuple(init.dims)
        itemsizes[init.name] = _itemsize(init.data_type)
    return static, shapes, itemsizes


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 4


def analyze(spec: ModelSpec) -> ModelInfo:
    """Load, validate and analyse a model with the user's input shapes."""
    model = load_model(spec.path)
    initializer_names = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor_spec(v) for v in model.graph.input if v.name not in initializer_names)
    outputs = tuple(_tensor_spec(v) for v in model.graph.output)
    if not inputs:
        raise UserError(f"{spec.path} has no inputs to feed")
    input_shapes, batch_axis = _resolve_input_shapes(inputs, dict(spec.input_shapes))
    _, shapes, itemsizes = _static_shapes(model, input_shapes)
    costs = tuple(node_cost(node, shapes, itemsizes) for node in model.graph.node)
    flops = sum(cost.flops for cost in costs)
    if flops > MAX_MODEL_FLOPS:
        raise UserError(f"the model needs {flops:.3g} FLOPs per inference at batch size 1; refusing to run it")
    by_class_flops: dict[str, int] = collections.Counter()
    by_class_bytes: dict[str, int] = collections.Counter()
    uncounted: dict[str, int] = collections.Counter()
    for cost in costs:
        by_class_flops[cost.op_class] += cost.flops
        by_class_bytes[cost.op_class] += cost.bytes
        if not cost.counted:
            uncounted[cost.op_type] += 1
    integer_inputs = {s.name for s in inputs if s.dtype.startswith(("int", "uint"))}
    weights = [init for init in model.graph.initializer]
    return ModelInfo(
        path=Path(spec.path),
        sha256=file_sha256(Path(spec.path)),
        opset=max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        inputs=inputs,
        outputs=outputs,
        params=sum(math.prod(init.dims) for init in weights),
        weight_bytes=sum(math.prod(init.dims) * _itemsize(init.data_type) for init in weights),
        flops=flops,
        bytes_moved=sum(cost.bytes for cost in costs),
        op_histogram=dict(collections.Counter(node.op_type for node in model.graph.node).most_common()),
        flops_by_class=dict(by_class_flops),
        bytes_by_class=dict(by_class_bytes),
        uncounted_ops=dict(uncounted),
        batch_axis=batch_axis,
        input_shapes=input_shapes,
        vocab_limits=_vocab_limits(model, integer_inputs),
        node_costs=costs,
    )
