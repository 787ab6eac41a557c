"""PyTorch sources: TorchScript files (.pt/.pth), torch.export programs (.pt2) and `module:callable` factories,
loaded, given example inputs, and exported through advisor.exporting.torch_export. The leading axis of every input
is dynamic ("batch").
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

from advisor.errors import UserError
from advisor.exporting import deps
from advisor.exporting.sources import CALLABLE, TORCH_EXPORT, TORCHSCRIPT, import_callable
from advisor.exporting.torch_export import (
    DYNAMO,
    SEED,
    Staged,
    export_module,
    first_line,
    flat_module,
    flatten_outputs,
    named_outputs,
    onnx_opset,
    random_inputs,
    to_numpy,
)


def _example_inputs(*holders) -> object | None:
    """The first `example_inputs` attribute found on the factory or the module (a value or a zero-arg callable)."""
    for holder in holders:
        value = getattr(holder, "example_inputs", None)
        if value is None:
            continue
        return value() if callable(value) else value
    return None


def _positional_names(module, count: int) -> list[str]:
    try:
        parameters = [p.name for p in inspect.signature(module.forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # TorchScript modules have no Python signature
        parameters = []
    return parameters[:count] if len(parameters) >= count else [f"input_{i}" for i in range(count)]


def _arrange_inputs(module, example, shapes: dict[str, tuple[int, ...]], source: str,
                    notes: list[str]) -> tuple[list[str], tuple, bool]:
    """(input names, input tensors, pass by keyword) from example inputs or from --input-shape."""
    torch = deps.require("torch")
    if example is not None:
        if shapes:
            notes.append("--input-shape ignored: the model provides its own example inputs")
        if isinstance(example, torch.Tensor):
            example = (example,)
        if isinstance(example, Mapping):
            names = [str(key) for key in example]
            values = tuple(example.values())
            keyword = True
        elif isinstance(example, (list, tuple)):
            values = tuple(example)
            names = _positional_names(module, len(values))
            keyword = False
        else:
            raise UserError(f"{source}: example_inputs must be a tensor, a tuple of tensors or a dict of tensors, "
                            f"not {type(example).__name__}")
        if not all(isinstance(value, torch.Tensor) for value in values):
            raise UserError(f"{source}: every example input must be a tensor")
        return names, values, keyword
    if not shapes:
        raise UserError(f"{source}: give the shape of each input with --input-shape NAME=d0,d1,... "
                        f"(e.g. --input-shape x=1,3,224,224); inputs are passed to forward() in that order")
    return list(shapes), random_inputs(shapes), False


def _load_torch_module(source: str, kind: str, notes: list[str]):
    torch = deps.require("torch")
    if kind == TORCHSCRIPT:
        try:
            with deps.quiet():  # torch.jit.load warns that TorchScript is deprecated, which the user knows
                return torch.jit.load(str(Path(source).expanduser()), map_location="cpu"), None
        except Exception as error:
            raise UserError(f"{source} is not a TorchScript file torch.jit.load can read ({first_line(error)})"
                            ) from None
    factory = import_callable(source)
    module = factory if isinstance(factory, torch.nn.Module) else None
    if module is None:
        if not callable(factory):
            raise UserError(f"{source} is neither an nn.Module nor callable")
        with deps.quiet():
            module = factory()
    if not isinstance(module, torch.nn.Module):
        raise UserError(f"{source} returned {type(module).__name__}, not a torch.nn.Module")
    return module, factory


def _staged_from(module, names: list[str], args: tuple, keyword: bool, staging: Path, opset: int,
                 try_dynamo: bool, notes: list[str]) -> Staged:
    torch = deps.require("torch")
    outputs = named_outputs(module, names, args, keyword)
    if not outputs:
        raise UserError("the model returned no tensors to export")
    # a TorchScript module is exported as it is: tracing a wrapper around it fails ("not part of the active
    # trace"), and the TorchScript-based exporter flattens its tuple outputs itself
    exported = module if isinstance(module, torch.jit.ScriptModule) else flat_module(module, names, keyword)
    dynamic = {name: {0: "batch"} for name, value in zip(names, args)
               if isinstance(value, torch.Tensor) and value.dim() > 0}
    path, exporter, more = export_module(exported, args, names, outputs, dynamic, staging, opset, try_dynamo)
    return Staged(path, exporter, {name: to_numpy(value) for name, value in zip(names, args)},
                  {name: to_numpy(value) for name, value in outputs}, dynamic, tuple(notes + more))


def _export_program(source: str, staging: Path, options, notes: list[str]) -> Staged:
    """A saved torch.export program: it is a traced graph already, so only the dynamo exporter applies."""
    torch = deps.require("torch")
    deps.require("onnxscript")
    try:
        program = torch.export.load(str(Path(source).expanduser()))
    except Exception as error:
        raise UserError(f"{source} is not a torch.export file torch.export.load can read ({first_line(error)})"
                        ) from None
    names = list(program.graph_signature.user_inputs)
    example = getattr(program, "example_inputs", None)
    if example is not None and not options.input_shapes:
        args, kwargs = example
        args = tuple(args)
    else:
        shapes = dict(options.input_shapes)
        if not shapes:
            raise UserError(f"{source} stores no example inputs: give --input-shape NAME=d0,d1,... for each input")
        if set(shapes) == set(names):
            shapes = {name: shapes[name] for name in names}
        elif len(shapes) != len(names):
            raise UserError(f"{source} takes {len(names)} inputs {names}; --input-shape gave {list(shapes)}")
        args, kwargs = random_inputs(shapes), {}
    if len(names) != len(args) + len(kwargs):
        names = [f"input_{i}" for i in range(len(args) + len(kwargs))]
    with torch.no_grad():
        outputs = flatten_outputs(program.module()(*args, **kwargs))
    output_names = [name for name, _ in outputs]
    path = staging / "dynamo" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), deps.quiet():
            torch.onnx.export(program, args, str(path), kwargs=kwargs or None, input_names=names,
                              output_names=output_names, opset_version=options.opset, dynamo=True, verbose=False)
    except Exception as error:
        raise UserError(f"torch.onnx.export could not export {source}: {first_line(error)}") from None
    produced = onnx_opset(path)
    if produced != options.opset:
        notes.append(f"exported at opset {produced}: the dynamo exporter could not convert to {options.opset}")
    values = list(args) + list(kwargs.values())
    dynamic = {name: {0: "batch"} for name, value in zip(names, values)
               if isinstance(value, torch.Tensor) and value.dim() > 0}
    return Staged(path, DYNAMO, {name: to_numpy(value) for name, value in zip(names, values)},
                  {name: to_numpy(value) for name, value in outputs}, dynamic, tuple(notes))


def export_torch_source(source: str, kind: str, staging: Path, options) -> Staged:
    """Export a TorchScript file, a torch.export file or a `module:callable` to a staged ONNX file."""
    torch = deps.require("torch")
    torch.manual_seed(SEED)
    notes: list[str] = []
    if kind == TORCH_EXPORT:
        return _export_program(source, staging, options, notes)
    if kind not in (TORCHSCRIPT, CALLABLE):
        raise ValueError(f"not a PyTorch source kind: {kind}")
    module, factory = _load_torch_module(source, kind, notes)
    module.eval()
    example = None if kind == TORCHSCRIPT else _example_inputs(factory, module)
    names, args, keyword = _arrange_inputs(module, example, dict(options.input_shapes), source, notes)
    try_dynamo = kind != TORCHSCRIPT
    if not try_dynamo:
        notes.append("the dynamo exporter does not take TorchScript modules; used the TorchScript-based exporter")
    return _staged_from(module, names, args, keyword, staging, options.opset, try_dynamo, notes)
