"""TensorRT engines on NVIDIA GPUs: the ONNX parser, an optimisation profile for the measured batch, the builder
optimisation level, a timing cache kept between runs, and precision the way the installed TensorRT offers it
(fp16 from an fp16-cast copy of the model on TensorRT 11, BuilderFlag.FP16 on TensorRT 10; INT8 only from the
model's own Q/DQ nodes). Engines are cached in the run folder, so the head-to-head and resumed runs reuse them.

Inputs are copied to device memory once, in `bind`; `execute` enqueues one inference and waits for it, so the
shared harness's wall-clock samples are complete inferences without copies. Copy times and CUDA-event timings
go into the trial's details. See tuners/tensorrt_engine.py for the binding library (cuda-python, or torch.cuda).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuners import tensorrt_engine as trt_lib
from tuners.base import Availability, Candidate, CompiledModel, ExportedFiles, Search, StagedSearch, TuneContext, Tuner

if TYPE_CHECKING:
    from hwprofiles.targets import Target

CUDA_EVENT_RUNS = 20  # inferences timed with CUDA events in bind(), for the details (the harness times the rest)
HIGH_OPTIMIZATION_LEVEL = 5


class TensorRtSearch(StagedSearch):
    """Baseline first (strict fp32, or a Q/DQ model's own INT8, at optimisation level 3); then precision (TF32,
    fp16), then optimisation level 5, then launching the best engine as a CUDA graph."""

    def __init__(self, target_id: str, qdq: bool, builder_fp16_flag: bool):
        fp16_source = "builder-flag" if builder_fp16_flag else "cast-model"

        def precision(best):
            if best["precision"] == "int8":  # TensorRT 11 has no way to add fp16 to a Q/DQ model's own types
                return [{**best, "precision": "int8+fp16", "fp16_source": "builder-flag"}] if builder_fp16_flag else []
            return [{**best, "precision": "tf32"}, {**best, "precision": "fp16", "fp16_source": fp16_source}]

        def optimization_level(best):
            return [{**best, "builder_optimization_level": HIGH_OPTIMIZATION_LEVEL}]

        def cuda_graph(best):
            return [{**best, "cuda_graph": True}]

        super().__init__("tensorrt", target_id, trt_lib.baseline_config(qdq),
                         [precision, optimization_level, cuda_graph])


class TensorRtCompiledModel(CompiledModel):
    """An engine with its inputs on the device. Details gain h2d_ms, d2h_ms and CUDA-event timings."""

    def __init__(self, runner: trt_lib.EngineRunner, cuda_graph: bool, details: dict[str, Any]):
        self.runner = runner
        self.binding = runner.binding
        self.cuda_graph = cuda_graph
        self.details = details
        self._graph = None

    def _launch(self) -> None:
        if self._graph is not None:
            self.binding.launch(self._graph, self.runner.stream)
        else:
            self.runner.enqueue()

    def bind(self, feeds: Mapping) -> None:
        self._graph = None
        self.runner.prepare(feeds)
        started = time.perf_counter()
        self.runner.upload()
        self.runner.synchronize()
        self.details["h2d_ms"] = round((time.perf_counter() - started) * 1000, 4)
        self.runner.enqueue()  # the first inference does TensorRT's lazy set-up, which must not be captured
        self.runner.synchronize()
        if self.cuda_graph:
            self._graph = self.binding.capture(self.runner.enqueue, self.runner.stream)
        gpu_ms = sorted(self.binding.elapsed_ms(self._launch, self.runner.stream) for _ in range(CUDA_EVENT_RUNS))
        self.details.update(cuda_event_ms_p50=round(statistics.median(gpu_ms), 4),
                            cuda_event_ms_min=round(gpu_ms[0], 4), cuda_event_runs=len(gpu_ms))

    def execute(self) -> None:
        self._launch()
        self.runner.synchronize()

    def outputs(self) -> list:
        started = time.perf_counter()
        outputs = self.runner.download()
        self.runner.synchronize()
        self.details["d2h_ms"] = round((time.perf_counter() - started) * 1000, 4)
        return [output.copy() for output in outputs]


class TensorRtTuner(Tuner):
    name = "tensorrt"

    def probe(self, target: Target) -> Availability:
        if target.kind != "cuda" or target.gpu is None:
            return Availability.no("TensorRT runs only on NVIDIA GPUs")
        reason = trt_lib.unavailable_reason(target, trt_lib.probe_install())
        return Availability.no(reason) if reason else Availability.yes()

    def search(self, ctx: TuneContext) -> Search:
        install = trt_lib.probe_install()
        return TensorRtSearch(ctx.target.id, trt_lib.has_qdq(ctx.info.op_histogram), install.builder_fp16_flag)

    # --- building ---------------------------------------------------------------------------------------------

    @staticmethod
    def _open_device(ctx: TuneContext) -> trt_lib.CudaBinding:
        # nvidia-smi numbers GPUs by PCI bus; CUDA's default order is fastest-first. Set before CUDA starts.
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        binding = trt_lib.load_binding()
        binding.set_device(trt_lib.cuda_device_index(ctx.target.gpu.index if ctx.target.gpu else 0))
        return binding

    def _engine(self, trt, candidate: Candidate, ctx: TuneContext) -> tuple[Path, dict[str, Any]]:
        """The engine plan for this configuration and batch size: reused from the run folder, or built now."""
        config = candidate.config
        path = trt_lib.engine_path(ctx.workdir, config, ctx.batch_size, ctx.info.sha256, trt.__version__)
        details: dict[str, Any] = {"tensorrt_version": trt.__version__, "engine_file": path.name}
        if path.exists():
            return path, {**details, "engine_reused": True, "engine_mib": round(path.stat().st_size / 2**20, 3)}
        recipe = trt_lib.build_recipe(config.get("precision", "fp32"), config.get("fp16_source"),
                                      hasattr(trt.BuilderFlag, "FP16"))
        model_path = trt_lib.fp16_model_path(ctx.info.path, ctx.workdir) if recipe.cast_model else ctx.info.path
        gpu = ctx.target.gpu
        request = trt_lib.BuildRequest(
            model_path=model_path, recipe=recipe,
            optimization_level=int(config.get("builder_optimization_level", trt_lib.DEFAULT_OPTIMIZATION_LEVEL)),
            profile=trt_lib.profile_shapes(ctx.info, ctx.batch_size),
            timing_cache=trt_lib.timing_cache_path(ctx.cache_dir, gpu.name if gpu else "unknown-gpu",
                                                   gpu.compute_capability if gpu else "unknown", trt.__version__))
        started = time.perf_counter()
        plan, facts = trt_lib.build_plan(trt, request)
        trt_lib.write_atomic(path, plan)
        return path, {**details, **facts, "engine_reused": False,
                      "engine_build_s": round(time.perf_counter() - started, 3),
                      "engine_mib": round(len(plan) / 2**20, 3), "model_file": model_path.name}

    def _load(self, trt, candidate: Candidate, ctx: TuneContext):
        path, details = self._engine(trt, candidate, ctx)
        try:
            runtime, engine = trt_lib.deserialize(trt, path.read_bytes())
        except trt_lib.EngineBuildError:
            if not details.get("engine_reused"):
                raise
            path.unlink(missing_ok=True)  # a stale or truncated cached plan: build it again once
            path, details = self._engine(trt, candidate, ctx)
            runtime, engine = trt_lib.deserialize(trt, path.read_bytes())
        return path, details, runtime, engine

    def build(self, candidate: Candidate, ctx: TuneContext) -> CompiledModel:
        trt = trt_lib.import_tensorrt()
        binding = self._open_device(ctx)
        _, details, runtime, engine = self._load(trt, candidate, ctx)
        size = getattr(engine, "device_memory_size_v2", None) or getattr(engine, "device_memory_size", 0)
        details.update(binding=binding.name, device_memory_mib=round(int(size) / 2**20, 3),
                       cuda_graph=bool(candidate.config.get("cuda_graph")))
        runner = trt_lib.EngineRunner(trt, runtime, engine, binding, [spec.name for spec in ctx.info.outputs])
        return TensorRtCompiledModel(runner, bool(candidate.config.get("cuda_graph")), details)

    # --- export -----------------------------------------------------------------------------------------------

    def export(self, candidate: Candidate, ctx: TuneContext, dest: Path) -> ExportedFiles:
        """The engine plan and engine.json: the TensorRT, CUDA and GPU it was built for (plans run only there)."""
        trt = trt_lib.import_tensorrt()
        binding = self._open_device(ctx)
        path, _, runtime, engine = self._load(trt, candidate, ctx)
        dest.mkdir(parents=True, exist_ok=True)
        plan = dest / trt_lib.PLAN_FILE
        shutil.copyfile(path, plan)
        device = binding.device_properties(trt_lib.cuda_device_index(ctx.target.gpu.index if ctx.target.gpu else 0))
        profile = trt_lib.profile_shapes(ctx.info, ctx.batch_size)
        bindings = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            entry = {"name": name, "mode": "input" if is_input else "output",
                     "dtype": trt_lib.np_dtype_name(trt, engine.get_tensor_dtype(name)),
                     "shape": [int(dim) for dim in engine.get_tensor_shape(name)]}
            if is_input and name in profile:
                entry["profile"] = dict(zip(("min", "opt", "max"), (list(shape) for shape in profile[name])))
            bindings.append(entry)
        install = trt_lib.probe_install()
        built_for = {
            "tensorrt_version": trt.__version__, "tensorrt_cuda_major": install.tensorrt_cuda_major,
            **binding.versions(), "driver_version": ctx.target.gpu.driver_version if ctx.target.gpu else None,
            "gpu_name": device["name"], "compute_capability": device["compute_capability"],
            "gpu_memory_gib": device["memory_gib"],
            "config": dict(candidate.config), "batch_size": ctx.batch_size,
            "bindings": bindings, "outputs": [spec.name for spec in ctx.info.outputs],
            "note": "a TensorRT plan runs only with the same TensorRT version on a GPU of the same compute "
                    "capability (best on the same GPU model); rebuild it elsewhere",
        }
        manifest = dest / trt_lib.ENGINE_MANIFEST
        manifest.write_text(json.dumps(built_for, indent=2, sort_keys=True) + "\n")
        del engine, runtime
        dist = trt_lib.tensorrt_distribution()
        requirements = [f"{dist[0] if dist else 'tensorrt'}=={trt.__version__}", "numpy"]
        if binding.name == "cuda-python":
            requirements.append(f"cuda-python=={binding.versions()['cuda-python']}")
        else:
            requirements.append(f"torch=={binding.versions()['torch']}")
        return ExportedFiles(files=(plan, manifest),
                             runtime={"plan": trt_lib.PLAN_FILE, "engine_manifest": trt_lib.ENGINE_MANIFEST},
                             requirements=tuple(requirements))

    def load_exported(self, folder: Path, runtime: dict):
        """feeds -> outputs with only tensorrt, the binding library and numpy; refuses a plan built elsewhere."""
        folder = Path(folder)
        built_for = json.loads((folder / runtime.get("engine_manifest", trt_lib.ENGINE_MANIFEST)).read_text())
        trt = trt_lib.import_tensorrt()
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        binding = trt_lib.load_binding()
        index = int(os.environ.get("ADVISOR_CUDA_DEVICE", "0"))
        binding.set_device(index)
        device = binding.device_properties(index)
        problems = trt_lib.plan_problems(built_for, trt.__version__, device["compute_capability"])
        if problems:
            raise RuntimeError("this TensorRT engine cannot run here: " + "; ".join(problems))
        trt_runtime, engine = trt_lib.deserialize(trt, (folder / runtime.get("plan", trt_lib.PLAN_FILE)).read_bytes())
        runner = trt_lib.EngineRunner(trt, trt_runtime, engine, binding, built_for.get("outputs"))
        return trt_lib.predictor(runner)

    def versions(self) -> dict[str, str]:
        install = trt_lib.probe_install()
        found = {}
        if install.tensorrt_version:
            found["tensorrt"] = install.tensorrt_version
        if install.binding and install.binding_version:
            found[install.binding] = install.binding_version
        if install.binding_cuda:
            found["cuda_runtime"] = install.binding_cuda
        return found
