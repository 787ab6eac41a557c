"""ONNX Runtime: execution providers, graph optimisation level, threads, execution mode, a dynamic-int8
quantised variant and static int8 (QDQ, calibrated: tuners/ort_quantize.py). The stock session (ONNX Runtime's
defaults) is always the first, baseline candidate.

Static int8 is searched in two stages after dynamic int8, which follows the thread count: the three calibration
methods on the best configuration so far, then keeping the worst nodes in float (EXCLUDE_WORST) on the fastest accepted static candidate, or,
when none was accepted (the usual reason: outside --tolerance), on each static candidate tried."""

from __future__ import annotations

import collections
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from tuners.base import (Availability, Candidate, CompiledModel, ExportedFiles, Search, StagedSearch, TrialOutcome,
                         TuneContext, Tuner)

if TYPE_CHECKING:
    from hwprofiles.targets import Target

GRAPH_LEVELS = ("disabled", "basic", "extended", "all")
CPU_PROVIDER = "CPUExecutionProvider"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
EXCLUDE_WORST = (2, 5)  # nodes kept in float by the exclusion stage


def stock_config(provider: str = CPU_PROVIDER) -> dict:
    """What a user gets from `InferenceSession(path)` with no settings: the baseline every candidate must beat."""
    return {"provider": provider, "graph_optimization": "all", "intra_op_threads": 0, "inter_op_threads": 0,
            "execution_mode": "sequential", "precision": "fp32", "stock": True}


def session_options(config: Mapping):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[config.get("graph_optimization", "all")]
    options.intra_op_num_threads = int(config.get("intra_op_threads", 0))
    options.inter_op_num_threads = int(config.get("inter_op_threads", 0))
    options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if config.get("execution_mode") == "parallel"
                              else ort.ExecutionMode.ORT_SEQUENTIAL)
    if config.get("allow_spinning") is False:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def providers_for(config: Mapping) -> list:
    provider = config.get("provider", CPU_PROVIDER)
    if provider == "TensorrtExecutionProvider":
        trt_options = {"trt_fp16_enable": config.get("precision") == "fp16"}
        return [(provider, trt_options), "CUDAExecutionProvider", CPU_PROVIDER]
    if provider == "CUDAExecutionProvider":
        return [provider, CPU_PROVIDER]
    return [CPU_PROVIDER]


def quantized_model_path(model_path: Path, workdir: Path) -> Path:
    """Dynamic int8 quantisation of the model (weights int8, activations quantised at run time), made once."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = workdir / f"{model_path.stem}.int8-dynamic.onnx"
    if not target.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial.onnx")
        quantize_dynamic(str(model_path), str(partial), weight_type=QuantType.QInt8)
        partial.replace(target)
    return target


class OrtCompiledModel(CompiledModel):
    def __init__(self, session, output_names: list[str], details: dict, model_path: Path, config: Mapping):
        self.session = session
        self.output_names = output_names
        self.details = details
        self._model_path = model_path
        self._config = config
        self._feeds: dict = {}
        self._outputs: list = []

    def bind(self, feeds):
        self._feeds = dict(feeds)

    def execute(self):
        self._outputs = self.session.run(self.output_names, self._feeds)

    def outputs(self):
        return [np.asarray(out) for out in self._outputs]

    def op_class_ms(self, runs: int = 10) -> dict[str, float]:
        """Where the time goes, per operator class, from ONNX Runtime's own profiler (ms per inference)."""
        import onnxruntime as ort

        from advisor.opcost import op_class

        options = session_options(self._config)
        options.enable_profiling = True
        session = ort.InferenceSession(str(self._model_path), options, providers=providers_for(self._config))
        for _ in range(runs):
            session.run(self.output_names, self._feeds)
        profile_path = Path(session.end_profiling())
        try:
            events = json.loads(profile_path.read_text())
        finally:
            profile_path.unlink(missing_ok=True)
        totals: dict[str, float] = collections.defaultdict(float)
        for event in events:
            if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
                op_type = event.get("args", {}).get("op_name", "other")
                totals[op_class(op_type)] += event.get("dur", 0) / 1000.0 / runs
        return dict(totals)


class OrtSearch(StagedSearch):
    """Stock first; then threads, dynamic int8, static int8 and its exclusions, spinning, graph optimisation and
    execution mode."""

    def __init__(self, target: Target, provider: str):
        from tuners.ort_quantize import CALIBRATION_METHODS, PRECISION

        self._static_tried: list[tuple[dict, float | None]] = []  # (config, latency or None when not accepted)
        cores = max(1, target.cpu.physical_cores)
        thread_counts = sorted({1, cores, *(n for n in (2, 4, 8, 16) if n < cores)})

        def threads(best):
            return [{**best, "stock": False, "intra_op_threads": n} for n in thread_counts]

        def spinning(best):
            return [{**best, "stock": False, "allow_spinning": False}]

        def graph_levels(best):
            return [{**best, "stock": False, "graph_optimization": level} for level in GRAPH_LEVELS]

        def execution_mode(best):
            return [{**best, "stock": False, "execution_mode": "parallel", "inter_op_threads": min(2, cores)}]

        def quantised(best):
            return [{**best, "stock": False, "precision": "int8-dynamic"}]

        def static_int8(best):
            fp32 = {key: value for key, value in best.items() if key not in ("calibration", "exclude_worst")}
            return [{**fp32, "stock": False, "precision": PRECISION, "calibration": method, "exclude_worst": 0}
                    for method in CALIBRATION_METHODS]

        def exclusions(_best):
            accepted = [(latency, config) for config, latency in self._static_tried if latency is not None]
            bases = [min(accepted, key=lambda item: item[0])[1]] if accepted else [
                config for config, _ in self._static_tried]
            return [{**base, "exclude_worst": n} for base in bases if not base.get("exclude_worst")
                    for n in EXCLUDE_WORST]

        def tensorrt(best):
            if provider != "CUDAExecutionProvider":
                return []
            return [{**best, "stock": False, "provider": "TensorrtExecutionProvider", "precision": p}
                    for p in ("fp32", "fp16")]

        # int8 right after the thread count: static int8 is the largest gain measured on VNNI/AMX-INT8 machines
        # (0.3x stock on a ResNet-18, 0.57x on a 4-layer BERT), so it is reached when the budget is short
        cpu_stages = [threads, quantised, static_int8, exclusions, spinning, graph_levels, execution_mode]
        stages = cpu_stages if provider == CPU_PROVIDER else [graph_levels, tensorrt]
        super().__init__("onnxruntime", target.id, stock_config(provider), stages)

    def tell(self, outcome: TrialOutcome) -> None:
        super().tell(outcome)
        config = dict(outcome.candidate.config)
        if config.get("precision") == "int8-static" and not config.get("exclude_worst"):
            self._static_tried.append((config, outcome.latency_ms if outcome.ok else None))


class OnnxRuntimeTuner(Tuner):
    name = "onnxruntime"

    def probe(self, target: Target) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError:
            return self.not_installed()
        providers = ort.get_available_providers()
        if target.kind == "cpu":
            return Availability.yes() if CPU_PROVIDER in providers else Availability.no("no CPU execution provider")
        if "CUDAExecutionProvider" not in providers:
            return Availability.no("onnxruntime has no CUDA execution provider (pip install 'advisor[gpu]', which "
                                   "installs onnxruntime-gpu)")
        return Availability.yes()

    def search(self, ctx: TuneContext) -> Search:
        provider = CPU_PROVIDER if ctx.target.kind == "cpu" else "CUDAExecutionProvider"
        return OrtSearch(ctx.target, provider)

    def model_path(self, candidate: Candidate, ctx: TuneContext) -> Path:
        return self._prepared(candidate, ctx)[0]

    def _prepared(self, candidate: Candidate, ctx: TuneContext) -> tuple[Path, dict]:
        """The model file the candidate runs, and what its making is worth reporting."""
        precision = candidate.config.get("precision")
        if precision == "int8-dynamic":
            return quantized_model_path(ctx.info.path, ctx.workdir), {}
        if precision == "int8-static":
            from advisor.sample_data import calibration_samples
            from tuners import ort_quantize

            quantized = ort_quantize.quantize(ctx.info.path, ctx.workdir,
                                              ort_quantize.StaticQuantization.from_config(candidate.config),
                                              calibration_samples(ctx.calibration_path, ctx.info))
            return quantized.path, quantized.details()
        return ctx.info.path, {}

    def build(self, candidate: Candidate, ctx: TuneContext) -> CompiledModel:
        import onnxruntime as ort

        started = time.perf_counter()
        path, made = self._prepared(candidate, ctx)
        session = ort.InferenceSession(str(path), session_options(candidate.config),
                                       providers=providers_for(candidate.config))
        details = {"build_time_s": round(time.perf_counter() - started, 3), "providers": session.get_providers(),
                   **made}
        if candidate.config.get("provider", CPU_PROVIDER) not in session.get_providers():
            raise RuntimeError(f"{candidate.config.get('provider')} could not be created; ONNX Runtime fell back to "
                               f"{session.get_providers()}")
        output_names = [out.name for out in session.get_outputs()]
        return OrtCompiledModel(session, output_names, details, path, dict(candidate.config))

    def export(self, candidate: Candidate, ctx: TuneContext, dest: Path) -> ExportedFiles:
        """The model ONNX Runtime runs, pre-optimised offline at the chosen level, plus its session settings."""
        import onnxruntime as ort

        dest.mkdir(parents=True, exist_ok=True)
        source = self.model_path(candidate, ctx)
        model_file = dest / "model.onnx"
        # Offline optimisation stops at "extended": ORT_ENABLE_ALL layouts are specific to the machine that made
        # them. The runner re-applies the configured level when it loads the model on the deployment host.
        offline = dict(candidate.config)
        if offline.get("graph_optimization") == "all":
            offline["graph_optimization"] = "extended"
        options = session_options(offline)
        options.optimized_model_filepath = str(model_file)
        try:
            ort.InferenceSession(str(source), options, providers=providers_for(candidate.config))
        except Exception:
            shutil.copyfile(source, model_file)
        if not model_file.exists():
            shutil.copyfile(source, model_file)
        settings = {key: candidate.config[key] for key in ("graph_optimization", "intra_op_threads",
                                                           "inter_op_threads", "execution_mode", "provider")
                    if key in candidate.config}
        if "allow_spinning" in candidate.config:
            settings["allow_spinning"] = candidate.config["allow_spinning"]
        (dest / "session_options.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        return ExportedFiles(files=(model_file, dest / "session_options.json"), runtime={"session_options": settings},
                             requirements=(f"onnxruntime=={ort.__version__}",))

    def load_exported(self, folder: Path, runtime: dict):
        import onnxruntime as ort

        settings = runtime.get("session_options", {})
        session = ort.InferenceSession(str(folder / "model.onnx"), session_options(settings),
                                       providers=providers_for(settings))
        return lambda feeds: session.run(None, dict(feeds))
