"""The PyTorch module a pytorch-backend candidate runs, wrapped to speak the ONNX model's interface.

The module is the user's own when SOURCE was PyTorch (a `module:callable`, a TorchScript or torch.export file, a
Hugging Face folder: loaded by the same code the ONNX export used), else the ONNX model converted by onnx2torch.
Either way it is wrapped in `OnnxOrdered`: inputs positional in the ONNX model's input order, outputs a tuple in
its output order, so the harness's feeds, the reference check, torch.compile, torch.export and the artifact all
see one interface. Which of the module's (flattened) outputs is which ONNX output is decided once, by name where
the export kept the names (it names them as advisor.exporting.torch_export.flatten_outputs does), else by position.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from advisor.exporting.torch_export import flatten_outputs

ONNX2TORCH = "onnx2torch"


def _flat_tensors(value) -> list:
    """The tensors of a model's output in flatten_outputs' order; plain Python, so torch.compile traces it."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [tensor for item in value.values() for tensor in _flat_tensors(item)]
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _flat_tensors(item)]
    return []


class OnnxOrdered(torch.nn.Module):
    """`inner` called with the ONNX inputs (by keyword when it takes them by those names) returning the ONNX
    outputs in order: `picks[i]` is the index, among the flattened outputs, of ONNX output i."""

    def __init__(self, inner: torch.nn.Module, input_names: tuple[str, ...], keyword: bool,
                 picks: tuple[int, ...]):
        super().__init__()
        self.inner = inner
        self.input_names = input_names
        self.keyword = keyword
        self.picks = picks

    def forward(self, *args):
        out = self.inner(**dict(zip(self.input_names, args))) if self.keyword else self.inner(*args)
        flat = _flat_tensors(out)
        return tuple(flat[index] for index in self.picks)


@dataclass(frozen=True)
class SourceModule:
    """The loaded module and how it was obtained."""

    module: torch.nn.Module  # eval mode, fp32, on the CPU
    origin: str  # "onnx2torch", or the advisor.exporting.sources kind of the user's SOURCE
    keyword: bool  # pass inputs by name


def _takes_by_name(module, names: list[str]) -> bool:
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # TorchScript modules have no Python signature
        return False
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return True
    return all(name in parameters for name in names)


def _load_hf_folder(folder: Path):
    """A local Hugging Face folder the way the export loaded it: the task inferred from its architectures."""
    from advisor.exporting import deps
    from advisor.exporting.hf_export import _load, infer_task  # private loader: reused so both see one model

    transformers = deps.require("transformers")
    with deps.offline(), deps.quiet():
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    with deps.offline():
        return _load(folder, infer_task(getattr(config, "architectures", None)))


def load_source(source: str | None, onnx_path: Path, input_names: list[str]) -> SourceModule:
    """The module for a SOURCE (None: the ONNX model at `onnx_path`, converted with onnx2torch)."""
    from advisor.exporting import deps
    from advisor.exporting.sources import CALLABLE, HUGGINGFACE, TORCH_EXPORT, TORCHSCRIPT, source_kind

    if source is None:
        from tuners.pytorch_convert import convert_onnx

        return SourceModule(convert_onnx(onnx_path).eval(), ONNX2TORCH, False)
    kind = source_kind(source)
    if kind == HUGGINGFACE:
        module = _load_hf_folder(Path(source).expanduser())
    elif kind == TORCH_EXPORT:
        with deps.quiet():
            module = torch.export.load(str(Path(source).expanduser())).module()
        return SourceModule(module, kind, False)  # an exported program's module takes its inputs positionally
    elif kind in (TORCHSCRIPT, CALLABLE):
        from advisor.exporting.torch_sources import _load_torch_module  # private loader, reused (see report)

        module, _ = _load_torch_module(source, kind, [])
    else:
        raise ValueError(f"{source}: not a PyTorch source ({kind})")
    module = module.float().eval() if hasattr(module, "float") else module.eval()
    return SourceModule(module, kind, _takes_by_name(module, input_names))


def output_picks(outputs, onnx_names: list[str]) -> tuple[int, ...]:
    """Index of each ONNX output among the module's flattened `outputs` (by name, else by position)."""
    names = [name for name, _ in flatten_outputs(outputs)]
    if set(onnx_names) <= set(names):
        return tuple(names.index(name) for name in onnx_names)
    if len(names) == len(onnx_names):
        return tuple(range(len(names)))
    raise RuntimeError(f"the PyTorch model returns {len(names)} tensors ({', '.join(names)}), the ONNX model has "
                       f"{len(onnx_names)} outputs ({', '.join(onnx_names)}): cannot tell which is which")


def ordered_module(source: SourceModule, input_names: list[str], output_names: list[str],
                   example: tuple) -> OnnxOrdered:
    """`source` wrapped to the ONNX interface; `example` (inputs in ONNX order) is run once to map outputs."""
    with torch.inference_mode():
        raw = (source.module(**dict(zip(input_names, example))) if source.keyword
               else source.module(*example))
    picks = output_picks(raw, output_names)
    return OnnxOrdered(source.module, tuple(input_names), source.keyword, picks).eval()
