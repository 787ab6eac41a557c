"""Saving a pytorch-backend module for the artifact: torch.export with a dynamic batch axis, else torch.export at
the measured shapes, else TorchScript (torch.jit.trace). The saved module is checked by running it once on the
example inputs against the live module before it is kept (a trace can silently bake in shapes or branches).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tuners.pytorch_runtime import to_numpy

EXPORT_FILE = "model.pt2"
TORCHSCRIPT_FILE = "model.pt"
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5  # the same fp32 computation, possibly reordered


@dataclass(frozen=True)
class SavedModule:
    file: str  # relative to the folder it was saved in
    format: str  # "torch.export" or "torchscript"
    dynamic_batch: bool  # whether the saved module accepts other batch sizes than the example's
    notes: tuple[str, ...] = ()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())[:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _matches(saved, module, example: tuple) -> None:
    with torch.inference_mode():
        want, got = to_numpy(module(*example)), to_numpy(saved(*example))
    if len(want) != len(got):
        raise RuntimeError(f"the saved module returns {len(got)} outputs, the module {len(want)}")
    for a, b in zip(got, want):
        if a.shape != b.shape or not _close(a, b):
            raise RuntimeError("the saved module's outputs differ from the module's")


def _close(a, b) -> bool:
    import numpy as np

    return bool(np.allclose(a, b, rtol=CHECK_RTOL, atol=CHECK_ATOL))


def _export(module, example: tuple, dynamic: bool):
    shapes = None
    if dynamic:
        # a batch of 1 would be specialised as a constant (0/1 specialisation): trace at batch 2, as the export does
        example = tuple(torch.cat([t, t]) if t.dim() > 0 and t.shape[0] == 1 else t for t in example)
        batch = torch.export.Dim("batch")
        # the wrapper's forward takes *args: the per-input specs go as one tuple for that single parameter
        shapes = (tuple({0: batch} if tensor.dim() > 0 else None for tensor in example),)
    with torch.no_grad():
        return torch.export.export(module, example, dynamic_shapes=shapes)


def save_module(module: torch.nn.Module, example: tuple, dest: Path) -> SavedModule:
    """Save `module` (called positionally with `example`) into `dest` in the first form that works."""
    notes: list[str] = []
    for dynamic in (True, False):
        try:
            program = _export(module, example, dynamic)  # checked below at the measured batch size
            _matches(program.module(), module, example)
            torch.export.save(program, str(dest / EXPORT_FILE))
            return SavedModule(EXPORT_FILE, "torch.export", dynamic, tuple(notes))
        except Exception as error:
            notes.append(f"torch.export ({'dynamic' if dynamic else 'static'} batch) failed: {_one_line(error)}")
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    _matches(traced, module, example)
    torch.jit.save(traced, str(dest / TORCHSCRIPT_FILE))
    return SavedModule(TORCHSCRIPT_FILE, "torchscript", False, tuple(notes))
