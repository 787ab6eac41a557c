"""PyTorch: the user's own module when SOURCE was PyTorch (module:callable, TorchScript / torch.export file, Hugging
Face folder), else the ONNX model converted by onnx2torch; run eager or torch.compile'd (default, max-autotune),
with autocast (bf16 on CPUs that compute it, bf16/fp16 on CUDA), channels-last for convolutional models, a
thread count on CPUs, and CUDA graphs on GPUs (tuners/pytorch_runtime.py says how each setting is applied).

Each candidate is a trial of the shared harness like every backend's: built in an isolated child, checked against
the ONNX Runtime fp32 reference (reduced precision held to --tolerance), then timed. torch.compile compiles on the
first calls, so `build` runs the compiled module until its graph is ready (COMPILE_WARMUP_CALLS) and records that
as `compile_s`: compile time is spent inside the trial (counted in the backend's budget) and never timed as an
inference. On CUDA `execute` ends with torch.cuda.synchronize(), so the harness's wall clock is complete; CUDA-event
timings of CUDA_EVENT_RUNS inferences go into the details too.

A model onnx2torch cannot convert fails its baseline trial with the operator named ("onnx2torch cannot convert
operator Det: ..."), which ends the search at once (tuners/pytorch_convert.py).

The artifact is the wrapped module saved with torch.export (batch axis dynamic where the export allows; else
static, else TorchScript via torch.jit.trace) in fp32, plus pytorch_config.json with the run settings; the runner
re-applies them (torch.compile included: compiled code is not portable) with only torch and numpy.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuners.base import Availability, Candidate, CompiledModel, ExportedFiles, Search, StagedSearch, TuneContext, Tuner

if TYPE_CHECKING:
    from hwprofiles.targets import Target

CUDA_EVENT_RUNS = 20  # inferences timed with CUDA events in bind(), for the details (the harness times the rest)
COMPILE_WARMUP_CALLS = 3  # torch.compile compiles on the first call; cudagraph trees record on the next ones
MAX_AUTOTUNE_MIN_BUDGET_S = 90.0  # max-autotune benchmarks kernel choices for minutes: tried only with this budget
CONFIG_FILE = "pytorch_config.json"


def baseline_config(device: str = "cpu") -> dict[str, Any]:
    """Eager fp32 with torch's own thread count: what running the model in PyTorch does by default."""
    return {"device": device, "mode": "eager", "cuda_graphs": False, "precision": "fp32", "channels_last": False,
            "threads": 0}


def has_convolutions(op_histogram: Mapping[str, int]) -> bool:
    return any(op in op_histogram for op in ("Conv", "ConvTranspose"))


class PyTorchSearch(StagedSearch):
    """Cheap candidates first: eager, then torch.compile default, precision, thread counts (CPU), channels-last
    (models with convolutions), then max-autotune (only with MAX_AUTOTUNE_MIN_BUDGET_S of budget: it spends
    minutes benchmarking kernels) and CUDA graphs (GPU). Each stage varies the best configuration so far."""

    def __init__(self, target: Target, convolutional: bool, budget_s: float):
        on_gpu = target.kind == "cuda"
        cores = max(1, target.threads or target.cpu.physical_cores)

        def compile_default(best):
            return [{**best, "mode": "compile"}]

        def precision(best):
            if on_gpu:
                return [{**best, "precision": "bf16"}, {**best, "precision": "fp16"}]
            return [{**best, "precision": "bf16"}] if target.cpu.computes_bf16 else []

        def threads(best):
            return [] if on_gpu else [{**best, "threads": n} for n in sorted({1, cores})]

        def channels_last(best):
            return [{**best, "channels_last": True}] if convolutional else []

        def max_autotune(best):
            return [{**best, "mode": "compile-max-autotune"}] if budget_s >= MAX_AUTOTUNE_MIN_BUDGET_S else []

        def cuda_graphs(best):
            return [{**best, "cuda_graphs": True}] if on_gpu else []

        super().__init__("pytorch", target.id, baseline_config("cuda" if on_gpu else "cpu"),
                         [compile_default, precision, threads, channels_last, max_autotune, cuda_graphs])


class PyTorchCompiledModel(CompiledModel):
    """A prepared (and, for compiled modes, already compiled) module with its inputs bound as tensors."""

    def __init__(self, call, settings, device, input_names: list[str], details: dict[str, Any]):
        self.call = call
        self.settings = settings
        self.device = device
        self.input_names = input_names
        self.details = details
        self._inputs: tuple = ()
        self._outputs: tuple = ()

    def _context(self):
        import torch

        from tuners.pytorch_runtime import autocast

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.settings, self.device))
        return stack

    def place(self, feeds: Mapping[str, np.ndarray]) -> None:
        """The feeds as tensors on the device, kept for every `execute`."""
        from tuners.pytorch_runtime import to_tensors

        self._inputs = to_tensors(feeds, self.input_names, self.settings, self.device)

    def bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        import torch

        from tuners.pytorch_runtime import GraphedCall

        self.place(feeds)
        if self.device.type != "cuda":
            return
        torch.cuda.synchronize()
        if self.settings.captures_graph:
            self.call = GraphedCall(self.call, self._inputs, self._context)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        gpu_ms = []
        for _ in range(CUDA_EVENT_RUNS):
            start.record()
            with self._context():
                self.call(*self._inputs)
            end.record()
            end.synchronize()
            gpu_ms.append(start.elapsed_time(end))
        gpu_ms.sort()
        self.details.update(cuda_event_ms_p50=round(statistics.median(gpu_ms), 4),
                            cuda_event_ms_min=round(gpu_ms[0], 4), cuda_event_runs=len(gpu_ms))

    def execute(self) -> None:
        with self._context():
            self._outputs = self.call(*self._inputs)
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize()

    def outputs(self) -> list[np.ndarray]:
        from tuners.pytorch_runtime import to_numpy

        return to_numpy(self._outputs)


class PyTorchTuner(Tuner):
    name = "pytorch"

    def probe(self, target: Target) -> Availability:
        if target.kind not in ("cpu", "cuda"):
            return Availability.no(f"the pytorch backend drives CPUs and CUDA GPUs, not {target.kind}")
        try:
            import torch
        except ImportError:
            return self.not_installed()
        if target.kind == "cuda":
            if not torch.cuda.is_available():
                return Availability.no(f"torch {torch.__version__} cannot use CUDA here (a CPU build, or no "
                                       f"working driver): install a CUDA build of torch")
            index = target.gpu.index if target.gpu else 0
            if index >= torch.cuda.device_count():
                return Availability.no(f"torch sees {torch.cuda.device_count()} CUDA device(s), not GPU {index}")
        return Availability.yes()

    def search(self, ctx: TuneContext) -> Search:
        return PyTorchSearch(ctx.target, has_convolutions(ctx.info.op_histogram), ctx.budget_s)

    # --- building ---------------------------------------------------------------------------------------------

    @staticmethod
    def _wrapped(ctx: TuneContext):
        """(the module wrapped to the ONNX interface, its origin, example inputs as CPU tensors in input order)."""
        import torch

        from advisor.feeds import make_feeds
        from tuners.pytorch_load import load_source, ordered_module

        names = [spec.name for spec in ctx.info.inputs]
        source = load_source(ctx.source, ctx.info.path, names)
        feeds = make_feeds(ctx.info, ctx.batch_size)  # the reference's shapes and dtypes
        example = tuple(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names)
        wrapped = ordered_module(source, names, [spec.name for spec in ctx.info.outputs], example)
        return wrapped, source.origin, feeds

    def build(self, candidate: Candidate, ctx: TuneContext) -> CompiledModel:
        import os

        import torch

        from tuners.pytorch_runtime import RunSettings, apply_threads, compiled, prepare_module, torch_device

        settings = RunSettings.from_config(candidate.config)
        # compiled kernels are kept with the advisor's other caches (a rerun compiles faster; compile_s says so)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(ctx.cache_dir) / "torchinductor"))
        threads = apply_threads(settings)
        started = time.perf_counter()
        wrapped, origin, feeds = self._wrapped(ctx)
        device = torch_device(settings, ctx.target.gpu.index if ctx.target.gpu else 0)
        module = prepare_module(wrapped, settings, device)
        load_s = time.perf_counter() - started
        names = [spec.name for spec in ctx.info.inputs]
        model = PyTorchCompiledModel(compiled(module, settings), settings, device, names, {})
        started = time.perf_counter()
        model.place(feeds)  # warm-up on the reference's shapes: the harness then times compiled code only
        for _ in range(COMPILE_WARMUP_CALLS if settings.compile_mode else 1):
            model.execute()
        compile_s = time.perf_counter() - started
        model.details = {"origin": origin, "load_s": round(load_s, 3), "compile_s": round(compile_s, 3),
                         "compile_mode": settings.compile_mode or "eager", "threads_in_force": threads,
                         "torch_version": torch.__version__, "device": str(device)}
        return model

    # --- the artifact -----------------------------------------------------------------------------------------

    def export(self, candidate: Candidate, ctx: TuneContext, dest: Path) -> ExportedFiles:
        """The fp32 module saved by torch.export (dynamic batch where possible) or TorchScript, and the settings."""
        import torch

        from tuners.pytorch_export import save_module
        from tuners.pytorch_runtime import RunSettings

        settings = RunSettings.from_config(candidate.config)
        wrapped, origin, feeds = self._wrapped(ctx)
        names = [spec.name for spec in ctx.info.inputs]
        example = tuple(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names)
        dest.mkdir(parents=True, exist_ok=True)
        saved = save_module(wrapped, example, dest)
        config = {"file": saved.file, "format": saved.format, "dynamic_batch": saved.dynamic_batch,
                  "settings": settings.to_dict(), "origin": origin, "inputs": names,
                  "outputs": [spec.name for spec in ctx.info.outputs], "export_notes": list(saved.notes)}
        (dest / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        version = self.versions().get("torch", torch.__version__.split("+")[0])
        return ExportedFiles(files=(dest / saved.file, dest / CONFIG_FILE), runtime={"pytorch": config},
                             requirements=(f"torch=={version}", "numpy"))

    def load_exported(self, folder: Path, runtime: dict):
        """feeds -> outputs with only torch and numpy, run with the trial's settings (torch.compile re-applied
        here, for the shapes it is called with). One call at a time."""
        import torch

        from tuners.pytorch_runtime import (GraphedCall, RunSettings, apply_threads, autocast, compiled,
                                            prepare_module, to_numpy, to_tensors, torch_device)

        config = runtime["pytorch"]
        settings = RunSettings.from_config(config["settings"])
        if settings.device == "cuda" and not torch.cuda.is_available():
            warnings.warn("this artifact was tuned on a CUDA GPU and runs here on the CPU: its latency is not the "
                          "one measured", stacklevel=2)
            settings = RunSettings.from_config({**settings.to_dict(), "device": "cpu", "cuda_graphs": False,
                                                "precision": "fp32" if settings.precision == "fp16"
                                                else settings.precision})
        apply_threads(settings)
        path = Path(folder) / config["file"]
        module = (torch.export.load(str(path)).module() if config["format"] == "torch.export"
                  else torch.jit.load(str(path), map_location="cpu"))
        device = torch_device(settings)
        call = compiled(prepare_module(module, settings, device), settings, dynamic=None)
        names = list(config["inputs"])
        graphs: dict[tuple, GraphedCall] = {}
        lock = threading.Lock()

        def context():
            stack = contextlib.ExitStack()
            stack.enter_context(torch.inference_mode())
            stack.enter_context(autocast(settings, device))
            return stack

        def predict(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            with lock:
                inputs = to_tensors(feeds, names, settings, device)
                if settings.captures_graph:
                    key = tuple((tuple(t.shape), t.dtype) for t in inputs)
                    if key not in graphs:
                        graphs[key] = GraphedCall(call, inputs, context)
                    outputs = graphs[key](*inputs)
                else:
                    with context():
                        outputs = call(*inputs)
                return to_numpy(outputs)

        return predict
