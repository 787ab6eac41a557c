"""torch.nn.Module -> ONNX with `torch.onnx.export`: the dynamo (torch.export-based) exporter first, the
TorchScript-based one when dynamo fails or cannot give the requested opset; plus the helpers both the PyTorch and
the Hugging Face paths use (output flattening, the positional wrapper, the reference run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from advisor.errors import UserError
from advisor.exporting import deps
from advisor.exporting.sources import first_line  # noqa: F401  (re-exported for the exporters)

DYNAMO = "torch.onnx.export(dynamo=True)"
TORCHSCRIPT_EXPORTER = "torch.onnx.export(dynamo=False)"
SEED = 0


@dataclass(frozen=True)
class Staged:
    """An exported but not yet finalised model, with the inputs and outputs of the source framework."""

    onnx_path: Path
    exporter: str
    inputs: dict[str, np.ndarray]  # what the source model was run on, by ONNX input name
    reference: dict[str, np.ndarray]  # the source framework's outputs on those inputs, by ONNX output name
    dynamic_axes: dict[str, dict[int, str]]  # input name -> {axis: symbolic name} the export was asked for
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- outputs and inputs

def flatten_outputs(value, prefix: str | None = None) -> list[tuple[str, object]]:
    """(name, tensor) pairs of a model's output: a tensor is "output", a tuple "output_0".., a dict (or a
    transformers ModelOutput) its keys. Non-tensor leaves (None, caches, ints) are dropped."""
    torch = deps.require("torch")
    if isinstance(value, torch.Tensor):
        return [(prefix or "output", value)]
    pairs: list[tuple[str, object]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            pairs += flatten_outputs(item, str(key) if prefix is None else f"{prefix}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            pairs += flatten_outputs(item, f"output_{index}" if prefix is None else f"{prefix}_{index}")
    return pairs


def flat_module(module, names: list[str], keyword: bool):
    """Wrap `module` so it takes its inputs positionally and returns a flat tuple of tensors (what the ONNX
    exporters want); `keyword` passes the inputs by name, as transformers models expect."""
    torch = deps.require("torch")

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, *args):
            out = self.inner(**dict(zip(names, args))) if keyword else self.inner(*args)
            return tuple(tensor for _, tensor in flatten_outputs(out))

    return Flat().eval()


def run_reference(module, args: tuple) -> list[tuple[str, object]]:
    torch = deps.require("torch")
    with torch.no_grad():
        return flatten_outputs(module(*args))


def named_outputs(module, names: list[str], args: tuple, keyword: bool) -> list[tuple[str, object]]:
    """The model's own outputs with their names (a Flat wrapper's tuple would lose the dict keys); same order."""
    torch = deps.require("torch")
    with torch.no_grad():
        return flatten_outputs(module(**dict(zip(names, args))) if keyword else module(*args))


def to_numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().numpy().copy()


def random_inputs(shapes: dict[str, tuple[int, ...]]) -> tuple:
    """Seeded float32 normal inputs, one per named shape, in the given order."""
    torch = deps.require("torch")
    generator = torch.Generator().manual_seed(SEED)
    return tuple(torch.randn(*shape, generator=generator, dtype=torch.float32) for shape in shapes.values())


def _grow(args: tuple, positions: list[tuple[int, int]]) -> tuple:
    """The inputs with each (input, axis) in `positions` one longer (its first slice repeated)."""
    torch = deps.require("torch")
    grown = list(args)
    for index, axis in positions:
        tensor = grown[index]
        grown[index] = torch.cat([tensor, tensor.narrow(axis, 0, 1)], dim=axis)
    return tuple(grown)


def probe_output_axes(module, args: tuple, names: list[str], dynamic: dict[str, dict[int, str]],
                      outputs: list[tuple[str, object]]) -> dict[str, dict[int, str]]:
    """Which output axes follow each dynamic input axis: run the model once more with that axis one longer and
    see which output sizes change. The TorchScript-based exporter needs this spelled out for outputs."""
    by_symbol: dict[str, list[tuple[int, int]]] = {}
    for index, name in enumerate(names):
        for axis, symbol in dynamic.get(name, {}).items():
            by_symbol.setdefault(symbol, []).append((index, axis))
    found: dict[str, dict[int, str]] = {}
    for symbol, positions in by_symbol.items():
        try:
            grown = run_reference(module, _grow(args, positions))
        except Exception:  # a model that cannot take the longer axis keeps static output sizes there
            continue
        for (name, base), (_, bigger) in zip(outputs, grown):
            for axis, (before, after) in enumerate(zip(base.shape, bigger.shape)):
                if before != after:
                    found.setdefault(name, {}).setdefault(axis, symbol)
    return found


# ----------------------------------------------------------------------------------------------------- exporting

def onnx_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return max((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), default=0)


def _dynamo(module, args: tuple, names: list[str], output_names: list[str], dynamic: dict[str, dict[int, str]],
            path: Path, opset: int) -> None:
    torch = deps.require("torch")
    deps.require("onnxscript")
    symbols: dict[str, object] = {}

    def dim(symbol: str):
        return symbols.setdefault(symbol, torch.export.Dim(symbol))

    # Flat.forward takes *args, so torch.export wants the per-input specs as one tuple for that single parameter
    specs = tuple({axis: dim(symbol) for axis, symbol in dynamic[name].items()} if dynamic.get(name) else None
                  for name in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), deps.quiet():
        torch.onnx.export(module, args, str(path), input_names=names, output_names=output_names,
                          opset_version=opset, dynamo=True, dynamic_shapes=(specs,), verbose=False)


def _torchscript(module, args: tuple, names: list[str], output_names: list[str],
                 axes: dict[str, dict[int, str]], path: Path, opset: int) -> None:
    torch = deps.require("torch")
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), deps.quiet():
        torch.onnx.export(module, args, str(path), input_names=names, output_names=output_names,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)


def export_module(module, args: tuple, names: list[str], outputs: list[tuple[str, object]],
                  dynamic: dict[str, dict[int, str]], staging: Path, opset: int,
                  try_dynamo: bool = True) -> tuple[Path, str, list[str]]:
    """Export a Flat-wrapped module; returns (staged path, exporter used, notes)."""
    output_names = [name for name, _ in outputs]
    notes: list[str] = []
    kept: Path | None = None  # a dynamo export at another opset, used if the fallback fails too
    dynamo_error = ""
    if try_dynamo:
        path = staging / "dynamo" / "model.onnx"
        try:
            _dynamo(module, args, names, output_names, dynamic, path, opset)
            produced = onnx_opset(path)
            if produced == opset:
                return path, DYNAMO, notes
            kept = path
            dynamo_error = f"it produced opset {produced}, not the requested {opset}"
        except Exception as error:  # includes a missing onnxscript: the TorchScript-based exporter needs none
            dynamo_error = f"it failed ({first_line(error)})"
    path = staging / "torchscript" / "model.onnx"
    axes = {**dynamic, **probe_output_axes(module, args, names, dynamic, outputs)}
    try:
        _torchscript(module, args, names, output_names, axes, path, opset)
    except Exception as error:
        if kept is not None:
            notes.append(f"exported at opset {onnx_opset(kept)} instead of {opset}: the dynamo exporter could not "
                         f"convert to {opset} and the TorchScript-based exporter failed ({first_line(error)})")
            return kept, DYNAMO, notes
        raise UserError(f"torch.onnx.export could not export the model: dynamo exporter: "
                        f"{dynamo_error or 'not tried'}; TorchScript-based exporter: {first_line(error)}") from None
    if try_dynamo:
        notes.append(f"used the TorchScript-based exporter because the dynamo exporter could not be used: "
                     f"{dynamo_error}")
    return path, TORCHSCRIPT_EXPORTER, notes
