"""How a pytorch-backend configuration runs a module: device, threads, precision (autocast), memory format,
torch.compile mode and CUDA graphs. Shared by the measured build (tuners/pytorch.py) and the artifact runner, so
the artifact runs the way its trial was timed. Imports only torch and numpy (the artifact runner has no more).

Config keys: device ("cpu" | "cuda"), mode ("eager" | "compile" | "compile-max-autotune"), cuda_graphs (bool),
precision ("fp32" | "bf16" | "fp16": autocast to that type; weights stay fp32), channels_last (bool), threads
(int, 0 = torch's default). CUDA graphs are torch.compile's own for compiled modes ("reduce-overhead", or
"max-autotune" rather than "max-autotune-no-cudagraphs") and a captured torch.cuda.CUDAGraph for eager.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MODES = ("eager", "compile", "compile-max-autotune")
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtypes; fp32 runs without autocast


@dataclass(frozen=True)
class RunSettings:
    device: str = "cpu"
    mode: str = "eager"
    cuda_graphs: bool = False
    precision: str = "fp32"
    channels_last: bool = False
    threads: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; one of {', '.join(MODES)}")
        if self.precision != "fp32" and self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; fp32, bf16 or fp16")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {self.device!r}; cpu or cuda")
        if self.cuda_graphs and self.device != "cuda":
            raise ValueError("CUDA graphs need device cuda")
        if self.precision == "fp16" and self.device != "cuda":
            raise ValueError("fp16 autocast is offered on CUDA only")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunSettings:
        return cls(device=str(config.get("device", "cpu")), mode=str(config.get("mode", "eager")),
                   cuda_graphs=bool(config.get("cuda_graphs", False)), precision=str(config.get("precision", "fp32")),
                   channels_last=bool(config.get("channels_last", False)), threads=int(config.get("threads", 0) or 0))

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "mode": self.mode, "cuda_graphs": self.cuda_graphs,
                "precision": self.precision, "channels_last": self.channels_last, "threads": self.threads}

    @property
    def compile_mode(self) -> str | None:
        """torch.compile's mode for this configuration; None for eager."""
        if self.mode == "eager":
            return None
        if self.mode == "compile":
            return "reduce-overhead" if self.cuda_graphs else "default"
        return "max-autotune" if self.cuda_graphs or self.device != "cuda" else "max-autotune-no-cudagraphs"

    @property
    def captures_graph(self) -> bool:
        """Whether CUDA graphs are captured by hand (eager) rather than by torch.compile."""
        return self.cuda_graphs and self.mode == "eager"


def torch_device(settings: RunSettings, gpu_index: int = 0) -> torch.device:
    if settings.device == "cuda":
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # nvidia-smi's numbering, as the target has it
        return torch.device("cuda", gpu_index)
    return torch.device("cpu")


def apply_threads(settings: RunSettings) -> int:
    """Set torch's intra-op threads (0 leaves torch's default); returns the count in force."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return torch.get_num_threads()


def prepare_module(module: torch.nn.Module, settings: RunSettings, device: torch.device) -> torch.nn.Module:
    """The module on the device, in channels-last memory format when asked (weights stay fp32)."""
    module = module.to(device)
    if settings.channels_last:
        module = module.to(memory_format=torch.channels_last)
    try:
        module.eval()
    except NotImplementedError:  # a torch.export program's module refuses eval(): it was exported in eval mode
        pass
    return module


def compiled(module: torch.nn.Module, settings: RunSettings, dynamic: bool | None = False) -> Callable:
    """torch.compile'd for compiled modes (static shapes by default: each build serves one batch size)."""
    mode = settings.compile_mode
    return module if mode is None else torch.compile(module, mode=mode, dynamic=dynamic)


def autocast(settings: RunSettings, device: torch.device):
    if settings.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[settings.precision])


def to_tensors(feeds: Mapping[str, np.ndarray], names: list[str], settings: RunSettings,
               device: torch.device) -> tuple[torch.Tensor, ...]:
    """The feeds as tensors on the device, in the model's input order; 4-d inputs channels-last when asked."""
    tensors = []
    for name in names:
        tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(device)
        if settings.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        tensors.append(tensor)
    return tuple(tensors)


def to_numpy(outputs) -> list[np.ndarray]:
    """Outputs as host fp32 (reduced-precision results upcast) numpy arrays, contiguous, owning their memory."""
    arrays = []
    for tensor in outputs:
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = tensor.float()
        arrays.append(tensor.cpu().contiguous().numpy().copy())
    return arrays


class GraphedCall:
    """A CUDA graph of `fn` on fixed input buffers: `__call__` copies new inputs in (when they are not the
    buffers themselves) and replays. Captured after warm-up runs on a side stream, as PyTorch requires."""

    WARMUP_RUNS = 3

    def __init__(self, fn: Callable, inputs: tuple[torch.Tensor, ...], context: Callable):
        self.inputs = inputs
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), context():
            for _ in range(self.WARMUP_RUNS):
                fn(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), context():
            self.outputs = fn(*inputs)

    def __call__(self, *inputs: torch.Tensor):
        for buffer, tensor in zip(self.inputs, inputs):
            if tensor is not buffer:
                buffer.copy_(tensor)
        self.graph.replay()
        return self.outputs
