"""ONNX -> PyTorch with onnx2torch, for ONNX sources of the pytorch backend.

onnx2torch 1.5.15 declares torchvision but needs it only for two operators (NonMaxSuppression, RoiAlign). PyPI's
torchvision cannot be installed beside the CPU build of torch (its extension does not load, and a broken
torchvision also breaks `transformers`), so onnx2torch is installed with `pip install --no-deps` and imported here
with a stand-in `torchvision` when the real one does not import: those two operators then fail to convert with a
message saying so, every other operator converts as usual. The stand-in is removed from sys.modules again at once.

A model onnx2torch cannot convert raises UnconvertibleModel naming the ONNX operator: from its "Converter is not
implemented" message, or, for an error raised inside an operator's converter, from the node being converted when it
was raised (read from the traceback, since onnx2torch's own messages often do not name it).
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

INSTALL_HINT = "pip install --no-deps onnx2torch==1.5.15"
_NOT_IMPLEMENTED = re.compile(r"operation_type='(?P<op>[^']+)'")


class UnconvertibleModel(RuntimeError):
    """onnx2torch cannot convert this model; `operator` is the ONNX operator it stopped at (None when unknown)."""

    def __init__(self, operator: str | None, detail: str):
        self.operator = operator
        what = f"operator {operator}" if operator else "this model"
        super().__init__(f"onnx2torch cannot convert {what}: {detail}")


def _torchvision_stand_in() -> types.ModuleType:
    """A `torchvision` whose ops say they need the real package (used only while onnx2torch is imported)."""

    def missing(*args, **kwargs):
        raise RuntimeError("this operator needs torchvision, which does not import beside this torch build")

    module = types.ModuleType("torchvision")
    module.ops = types.ModuleType("torchvision.ops")
    module.ops.nms = module.ops.box_convert = module.ops.roi_align = missing
    return module


def import_onnx2torch():
    """onnx2torch, with a stand-in torchvision where the real one does not import. ImportError when absent."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    try:
        importlib.import_module("torchvision")
    except Exception:  # ImportError, or torchvision's extension failing beside this torch (RuntimeError)
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        stand_in = _torchvision_stand_in()
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = stand_in, stand_in.ops
        try:
            import onnx2torch
        finally:
            del sys.modules["torchvision"], sys.modules["torchvision.ops"]
        return onnx2torch
    import onnx2torch

    return onnx2torch


def _node_being_converted(error: BaseException) -> str | None:
    """The operator type of the node onnx2torch's `convert` loop was at when `error` was raised."""
    traceback = error.__traceback__
    found = None
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name == "convert" and "onnx2torch" in frame.f_code.co_filename:
            node = frame.f_locals.get("onnx_node")
            found = getattr(node, "operation_type", None) or found
        traceback = traceback.tb_next
    return found


def convert_onnx(path: Path):
    """The ONNX model at `path` as a torch.fx.GraphModule (inputs positional in the graph's input order, outputs a
    tensor or a tuple in its output order). Raises UnconvertibleModel naming the operator when it cannot."""
    onnx2torch = import_onnx2torch()
    try:
        return onnx2torch.convert(str(path))
    except Exception as error:
        message = " ".join(str(error).split())[:300] or type(error).__name__
        match = _NOT_IMPLEMENTED.search(message)
        if match:
            raise UnconvertibleModel(match.group("op"), "onnx2torch 1.5.15 has no converter for it") from None
        raise UnconvertibleModel(_node_being_converted(error), f"{type(error).__name__}: {message}") from None
