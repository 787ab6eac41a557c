"""Apache TVM: the model imported through the Relax ONNX frontend and compiled for the target, first with TVM's
default pipeline (`tuned: false`), then tuned with MetaSchedule within this backend's share of the budget
(`tuned: true`), both measured by the shared harness. Tuning records go to a database kept between runs
(tuners/tvm_tuning.py); the build pipeline and targets are in tuners/tvm_compile.py. The config names the
candidate; what each build really got (`tuning_status`: tuned, predicted or untuned, and the counts behind it)
is in its details (docs/tvm.md, "What the label means").

Every build runs in the isolated child the harness gives each candidate, so a segfault or hang inside TVM is a
failed trial. The tuned candidate's tuning happens once per run folder and batch size (a marker file records
it): the head-to-head, the batch sweep and the artifact export rebuild from the database without tuning again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuners import tvm_compile as tc
from tuners.base import Availability, Candidate, CompiledModel, ExportedFiles, Search, StagedSearch, TuneContext, Tuner

if TYPE_CHECKING:
    from hwprofiles.targets import Target

RESERVED_S = 30.0  # of the backend's budget: the untuned trial, and the tuned trial's import, build and timing
MIN_TUNING_S = 20.0
SECONDS_PER_TRIAL = 0.5  # caps the trial count for a tuning time; the deadline is what really stops tuning
SWEEP_TUNING_SHARE = 0.25  # of the tuning time, spent again on each other batch size of the sweep
LIBRARY = "model.so"


def tuning_plan(budget_s: float) -> dict[str, Any]:
    """Tuning time and trial cap for a backend budget. Deterministic, so resumed runs ask for the same trial."""
    seconds = max(MIN_TUNING_S, budget_s - RESERVED_S)
    return {"tuning_s": round(seconds), "max_trials": max(8, int(seconds / SECONDS_PER_TRIAL))}


class TvmSearch(StagedSearch):
    """The untuned build first (the baseline: what TVM gives without tuning), then the MetaSchedule-tuned build."""

    def __init__(self, target: Target, budget_s: float, batch_size: int):
        spec = tc.target_spec(target)
        baseline = {"target": tc.target_label(spec), "num_threads": tc.threads_for(target), "opt_level": 3,
                    "tuned": False, "tuning": "none"}

        def tuned(best):
            plan = tuning_plan(budget_s)
            return [{**best, "tuned": True, "tuning": "meta_schedule", **plan, "batch_size": batch_size}]

        super().__init__("tvm", target.id, baseline, [tuned])


class TvmCompiledModel(CompiledModel):
    """A Relax VM executable on its device; inputs are copied to the device in `bind`."""

    def __init__(self, executable, spec: Mapping[str, Any], input_names: list[str], details: dict[str, Any]):
        from tvm import relax

        self.executable = executable
        self.device = tc.device_for(spec)
        self.vm = relax.VirtualMachine(executable, self.device)
        self.main = self.vm["main"]
        self.input_names = input_names
        self.details = details
        self._args: list = []
        self._result = None

    def bind(self, feeds):
        import tvm

        self._args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[name]), self.device) for name in self.input_names]

    def execute(self):
        self._result = self.main(*self._args)
        self.device.sync()

    def outputs(self):
        return tc.flatten_outputs(self._result)

    def op_class_ms(self, runs: int = 10) -> dict[str, float]:
        """Time per inference by operator class, from the VM's instrumentation hook (kernel names such as
        `fused_conv2d_add_relu` name their operators; a fused kernel counts for its leading operator)."""
        import time as clock

        from tvm import relax

        vm = relax.VirtualMachine(self.executable, self.device)
        totals: dict[str, float] = {}
        started: dict[str, float] = {}

        def instrument(func, symbol, before_run, ret_value, *args):
            name = str(symbol)
            if before_run:
                started[name] = clock.perf_counter()
            elif name in started:
                self.device.sync()
                kind = tc.kernel_class(name)
                totals[kind] = totals.get(kind, 0.0) + (clock.perf_counter() - started.pop(name)) * 1000 / runs
            return 0

        vm.set_instrument(instrument)
        for _ in range(runs):
            vm["main"](*self._args)
        return totals


class TvmTuner(Tuner):
    name = "tvm"

    def probe(self, target: Target) -> Availability:
        if target.rpc is not None:  # TVM RPC hook: a remote device (tuners/tvm_rpc.py)
            from tuners import tvm_rpc

            return tvm_rpc.availability(target.rpc)
        try:
            import tvm
        except ImportError:
            return self.not_installed()
        if target.kind == "cpu":
            if not tvm.runtime.enabled("llvm"):
                return Availability.no("this TVM build has no LLVM code generator for CPUs")
            return Availability.yes()
        if target.kind == "cuda":
            if not tvm.runtime.enabled("cuda"):
                return Availability.no("this TVM build has no CUDA runtime, or it found no CUDA driver "
                                       "(a CUDA-enabled apache-tvm and an NVIDIA driver are needed)")
            index = target.gpu.index if target.gpu else 0
            if not tvm.cuda(index).exist:
                return Availability.no(f"TVM cannot open CUDA device {index}")
            return Availability.yes()
        return Availability.no(f"no TVM target for {target.kind} devices")

    def search(self, ctx: TuneContext) -> Search:
        return TvmSearch(ctx.target, ctx.budget_s, ctx.batch_size)

    # ---- build --------------------------------------------------------------------------------------------------

    def _import(self, ctx: TuneContext, spec: Mapping[str, Any]):
        shapes = ctx.info.shapes_at(ctx.batch_size)
        static = tc.static_model_path(ctx.info.path, shapes, ctx.workdir)
        return tc.import_onnx(static, shapes), tc.make_target(spec), list(shapes)

    def build(self, candidate: Candidate, ctx: TuneContext) -> CompiledModel:
        config = candidate.config
        spec = tc.target_spec(ctx.target)
        if config.get("target") != tc.target_label(spec):
            raise RuntimeError(f"candidate was made for TVM target {config.get('target')!r}, this host gives "
                               f"{tc.target_label(spec)!r}")
        threads = int(config.get("num_threads", tc.threads_for(ctx.target)))
        tc.set_runtime_threads(threads)
        from tuners import tvm_tuning

        if ctx.target.kind == "cpu":
            tvm_tuning.register_cpu_intrinsics_only(ctx.target.cpu.arch)
        started = time.perf_counter()
        mod, target, input_names = self._import(ctx, spec)
        if not config.get("tuned"):
            executable = tc.build_untuned(mod, target)
            details = {"tuned": False, "compile_time_s": round(time.perf_counter() - started, 2),
                       **tvm_tuning.untuned_label(tc.task_count(mod, target))}
            return _compiled_model(executable, spec, input_names, details, ctx)
        problem = tc.ffi_problem()
        if problem:
            raise RuntimeError(problem)
        folder = self.tuning_folder(candidate, ctx)
        shared = self.shared_database(ctx, spec)
        tuning = self._ensure_tuned(mod, target, candidate, ctx, folder, shared, threads)
        compile_started = time.perf_counter()
        databases = (tvm_tuning.open_database(folder), tvm_tuning.open_database(folder / tvm_tuning.FALLBACK))
        executable, facts = tc.build_with_database(mod, target, databases, threads)
        # `tuned: True` names the build (the MetaSchedule database build, not the default pipeline);
        # `tuning_status` says what it really got
        details = {"tuned": True, **tuning, **facts, "database": str(shared),
                   "compile_time_s": round(time.perf_counter() - compile_started, 2),
                   **tvm_tuning.tuning_label(tuning, facts, ctx.batch_size)}
        return _compiled_model(executable, spec, input_names, details, ctx)

    @staticmethod
    def shared_database(ctx: TuneContext, spec: Mapping[str, Any]) -> Path:
        from tuners.tvm_tuning import cache_folder

        return cache_folder(ctx.cache_dir, tc.target_label(spec))

    @staticmethod
    def tuning_folder(candidate: Candidate, ctx: TuneContext) -> Path:
        return ctx.workdir / "tuning" / f"{candidate.key}-b{ctx.batch_size}"

    @staticmethod
    def _ensure_tuned(mod, target, candidate: Candidate, ctx: TuneContext, folder: Path, shared: Path,
                      threads: int) -> dict[str, Any]:
        """Tune once per run folder and batch size; later builds (head-to-head, export) reuse the records."""
        from tuners import tvm_tuning

        marker = folder / "tuned.json"
        if marker.exists():  # tuned earlier in this run: the same facts, without the progress curve again
            details = json.loads(marker.read_text())["details"]
            return {**{k: v for k, v in details.items() if k != "progress"}, "tuned_in": "an earlier trial"}
        tvm_tuning.private_copy(shared, folder)
        # the batch size the search measured gets the whole tuning time; each other size of the sweep a share
        # (one too short to measure a round goes to cost-model picks: the label says "predicted", and a sweep
        # build labelled otherwise than the build compared at the search's batch size is left out of sizing)
        share = 1.0 if ctx.batch_size == int(candidate.config.get("batch_size", 1)) else SWEEP_TUNING_SHARE
        seconds = float(candidate.config["tuning_s"]) * share
        trials = max(8, int(int(candidate.config["max_trials"]) * share))
        runner, measured_on = _remote_runner(ctx)
        outcome = tvm_tuning.tune(tc.fused_module(mod, target), target, folder, trials, seconds, threads,
                                  runner=runner)
        added = tvm_tuning.merge_records(folder, shared)
        details = {**outcome.details(), "records_added": added, "tuning_budget_s": round(seconds, 2), **measured_on}
        partial = marker.with_suffix(".partial")
        partial.write_text(json.dumps({"details": details, "tasks": outcome.task_table}, indent=1))
        partial.replace(marker)
        return details

    # ---- export -------------------------------------------------------------------------------------------------

    def export(self, candidate: Candidate, ctx: TuneContext, dest: Path) -> ExportedFiles:
        """The compiled module as a shared library (weights bound inside), loadable with only the TVM runtime."""
        import tvm

        model = self.build(candidate, ctx)
        dest.mkdir(parents=True, exist_ok=True)
        library = dest / (LIBRARY if ctx.target.rpc is None else _rpc_library())  # TVM RPC hook
        model.executable.export_library(str(library))
        spec = tc.target_spec(ctx.target)
        settings = {"library": library.name, "device": "cuda" if spec["kind"] == "cuda" else "cpu",
                    "inputs": model.input_names, "target": tc.target_label(spec),
                    "num_threads": int(candidate.config.get("num_threads", 0)),
                    "tuned": bool(candidate.config.get("tuned")), "tvm_version": tvm.__version__,
                    "tuning_status": model.details.get("tuning_status")}
        (dest / "tvm_module.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        versions = self.versions()
        return ExportedFiles(files=(library, dest / "tvm_module.json"), runtime={"tvm": settings},
                             requirements=tuple(f"{name}=={version}" for name, version in versions.items()
                                                if version != "unknown"))

    def load_exported(self, folder: Path, runtime: dict):
        import tvm
        from tvm import relax

        settings = runtime["tvm"]
        if settings.get("num_threads"):
            tc.set_runtime_threads(int(settings["num_threads"]))
        device = tvm.cuda(0) if settings["device"] == "cuda" else tvm.cpu(0)
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(folder / settings["library"])), device)
        main = vm["main"]
        names = list(settings["inputs"])

        def predict(feeds):
            args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[name]), device) for name in names]
            result = main(*args)
            device.sync()
            return tc.flatten_outputs(result)

        return predict

    def versions(self) -> dict[str, str]:
        import tvm

        return {"apache-tvm": _package_version("apache-tvm", tvm.__version__), "apache-tvm-ffi": tc.ffi_version()}


# ---- TVM RPC hooks: a target with `rpc` set is a remote device; everything RPC-specific is in tuners/tvm_rpc.py ----


def _compiled_model(executable, spec: Mapping[str, Any], input_names: list[str], details: dict[str, Any],
                    ctx: TuneContext) -> CompiledModel:
    if ctx.target.rpc is None:
        return TvmCompiledModel(executable, spec, input_names, details)
    from tuners.tvm_rpc import RemoteCompiledModel

    return RemoteCompiledModel(executable, ctx.target.rpc, input_names, details)


def _remote_runner(ctx: TuneContext) -> tuple[Any, dict[str, Any]]:
    """MetaSchedule's runner for the target (None: this machine's) and where it measures, for the details."""
    if ctx.target.rpc is None:
        return None, {}
    from tuners import tvm_rpc

    return tvm_rpc.tuning_runner(ctx.target.rpc), tvm_rpc.runner_facts(ctx.target.rpc)


def _rpc_library() -> str:
    from tuners.tvm_rpc import LIBRARY as RPC_LIBRARY

    return RPC_LIBRARY  # object files, linked on the device when loaded: no cross linker needed here


def _package_version(name: str, fallback: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return fallback
