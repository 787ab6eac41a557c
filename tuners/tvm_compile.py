"""Apache TVM (Relax) compilation: targets, static-shape import of an ONNX model, and the two builds the TVM
backend measures, the default pipeline ("untuned") and the MetaSchedule-database build ("tuned").

Real exported models carry symbolic axes that the Relax ONNX frontend rejects, so every import first makes the
model static for the shapes being measured (onnxslim with concrete input shapes: shape inference and constant
folding). The tuned build applies the tuning database to the fused TIR functions and gives every function the
database does not cover a fallback schedule (one sample of MetaSchedule's own design space for the target, with
a fixed seed: tiled, parallel and vectorised), because the default pipeline leaves such functions unscheduled:
single-threaded scalar loops, 50-100x slower than ONNX Runtime.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hwprofiles.targets import Target

KNOWN_BAD_FFI = ("0.1.15",)  # apache-tvm-ffi 0.1.15.x segfaults in every MetaSchedule run (../shared/NOTES.md)
KNOWN_GOOD_FFI = "0.1.14.post0"
FALLBACK_SEED = 1


def target_spec(target: Target) -> dict[str, Any]:
    """The TVM target for an advisor target, as the dict form TVM 0.27 requires (string forms are rejected)."""
    if target.rpc is not None:  # a TVM RPC device: its target was resolved when the run started (tuners/tvm_rpc.py)
        return dict(target.rpc.tvm_target)
    if target.kind == "cuda":
        arch = "sm_" + target.gpu.compute_capability.replace(".", "") if target.gpu else None
        spec: dict[str, Any] = {"kind": "cuda"}
        if arch and arch != "sm_":
            spec["arch"] = arch
        return spec
    spec = {"kind": "llvm", "num-cores": threads_for(target)}
    if target.cpu.arch == "aarch64":
        spec["mtriple"] = "aarch64-linux-gnu"
    if target.cpu.microarchitecture and target.cpu.microarchitecture != "generic":
        spec["mcpu"] = target.cpu.microarchitecture
    return spec


def threads_for(target: Target) -> int:
    return target.threads or max(1, target.cpu.physical_cores)


def target_label(spec: Mapping[str, Any]) -> str:
    """A short stable text for a target spec: config values, cache folder names."""
    parts = [str(spec["kind"])] + [f"{key}={spec[key]}" for key in sorted(spec) if key != "kind"]
    return " ".join(parts)


def make_target(spec: Mapping[str, Any]):
    import tvm

    if spec["kind"] == "cuda":
        return tvm.target.Target(dict(spec), host={"kind": "llvm"})
    return tvm.target.Target(dict(spec))


def device_for(spec: Mapping[str, Any]):
    import tvm

    return tvm.cuda(0) if spec["kind"] == "cuda" else tvm.cpu(0)


def set_runtime_threads(threads: int) -> None:
    """TVM's CPU thread pool reads TVM_NUM_THREADS when it starts: set it before the first run in this process."""
    os.environ["TVM_NUM_THREADS"] = str(threads)


def static_model_path(model_path: Path, shapes: Mapping[str, tuple[int, ...]], workdir: Path) -> Path:
    """The model with every input axis fixed and shapes folded (onnxslim), written once per shape set."""
    import onnx
    import onnxslim

    key = "_".join("x".join(map(str, shape)) for shape in shapes.values())
    target = workdir / f"static-{key}.onnx"
    if target.exists():
        return target
    workdir.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(model_path))
    slimmed = onnxslim.slim(model, input_shapes=[f"{name}:{','.join(map(str, shape))}"
                                                 for name, shape in shapes.items()])
    partial = target.with_suffix(".partial.onnx")
    onnx.save(slimmed, str(partial))
    partial.replace(target)
    return target


def import_onnx(static_path: Path, shapes: Mapping[str, tuple[int, ...]]):
    """Relax IRModule of a static ONNX model, weights bound as constants. An operator the frontend cannot
    convert raises RuntimeError naming it (the candidate fails; the other backends go on)."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(static_path))
    try:
        return from_onnx(model, shape_dict={name: list(shape) for name, shape in shapes.items()},
                         keep_params_in_input=False)
    except tvm.error.OpNotImplemented as error:
        raise RuntimeError(f"TVM's Relax ONNX frontend cannot convert this model: {error}") from None


def fuse_passes(target) -> list:
    """Legalize and fuse: what MetaSchedule's task extraction sees, so database keys match the tuned build."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

    dispatch = cpu_pipeline.library_dispatch_passes(target) if target.kind.name == "llvm" else []
    return [*dispatch, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]


def fused_module(mod, target):
    import tvm

    with target:
        return tvm.transform.Sequential(fuse_passes(target))(mod)


def _lowering_passes(target) -> list:
    from tvm.relax import pipeline as relax_pipeline
    from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

    if target.kind.name == "llvm":
        return cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target)
    return relax_pipeline.dataflow_lower_passes(target) + relax_pipeline.finalize_passes(target)


def build_untuned(mod, target):
    """TVM's default Relax pipeline for the target, as a user gets it from `tvm.compile` (for CUDA that pipeline
    itself gives every kernel a DLight default schedule, without which GPU kernels cannot be built at all)."""
    import tvm

    return tvm.compile(mod, target=target)


def _unscheduled(mod) -> list:
    import tvm

    return [(gv, func) for gv, func in mod.functions.items()
            if isinstance(func, tvm.tirx.PrimFunc) and not (func.attrs and func.attrs.get("tirx.is_scheduled", False))]


def fallback_schedules(mod, target, threads: int) -> tuple[Any, list[str]]:
    """Give every unscheduled CPU function one sample of MetaSchedule's design space (seeded): tiling, parallel
    outer loops and vectorised inner loops, never measured. Returns the module and the functions so scheduled."""
    import tvm
    from tvm import IRModule
    from tvm.s_tir import meta_schedule as ms

    scheduled = []
    for gv, func in _unscheduled(mod):
        space = ms.space_generator.PostOrderApply(sch_rules="from-target", postprocs="from-target",
                                                  mutator_probs="from-target")
        context = ms.TuneContext(mod=IRModule({"main": func}), target=target, space_generator=space,
                                 task_name=gv.name_hint, num_threads=threads, rand_state=FALLBACK_SEED)
        try:
            spaces = context.generate_design_space()
            schedule = spaces[-1]
            if not all(postproc.apply(schedule) for postproc in context.space_generator.postprocs):
                continue
        except tvm.TVMError:
            continue  # keep the default lowering for a function the design space cannot handle
        mod[gv] = schedule.mod["main"].with_attr("tirx.is_scheduled", True)
        scheduled.append(gv.name_hint)
    return mod, scheduled


def task_count(mod, target) -> int:
    """How many tuning tasks (distinct fused functions) MetaSchedule would see in the model: the untuned build's
    `tasks_total`, comparable with a tuned build's."""
    from tvm.s_tir import meta_schedule as ms

    return len(ms.relax_integration.extract_tasks(fused_module(mod, target), target))


def build_with_database(mod, target, databases: tuple, threads: int) -> tuple[Any, dict[str, Any]]:
    """The tuned build: each fused function gets its schedule from the first database that has one (measured
    records, then the cost model's picks), and a design-space sample when none has. Returns the executable and
    how many functions came from where (for the report and the label: `functions_unscheduled` counts those left
    with the default pipeline's naive loops because even the design space failed on them)."""
    import tvm
    from tvm import relax
    from tvm.relax.transform import MetaScheduleApplyDatabase

    facts: dict[str, Any] = {}

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(module, _ctx):
        module = tvm.transform.Sequential(fuse_passes(target))(module)
        facts["functions"] = len(_unscheduled(module))
        for name, database in zip(("functions_from_database", "functions_from_cost_model"), databases):
            before = len(_unscheduled(module))
            with database:
                module = MetaScheduleApplyDatabase(enable_warning=False)(module)
            facts[name] = before - len(_unscheduled(module))
        remaining = len(_unscheduled(module))
        if target.kind.name == "cuda":
            from tvm.s_tir import dlight as dl

            module = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                             dl.gpu.GeneralReduction(), dl.gpu.Fallback())(module)
            facts["functions_fallback"] = remaining
        else:
            module, fallback = fallback_schedules(module, target, threads)
            facts["functions_fallback"] = len(fallback)
        facts["functions_unscheduled"] = len(_unscheduled(module))
        return tvm.transform.Sequential(_lowering_passes(target))(module)

    with target, tvm.transform.PassContext(opt_level=3):
        executable = relax.build(mod, target=target, relax_pipeline=pipeline)
    return executable, facts


KERNEL_CLASSES = (  # substrings of Relax kernel names -> advisor.opcost classes, first match wins
    ("conv", "conv"), ("matmul", "matmul"), ("dense", "matmul"), ("pool", "pooling"), ("softmax", "reduction"),
    ("layer_norm", "normalization"), ("batch_norm", "normalization"), ("group_norm", "normalization"),
    ("mean", "reduction"), ("sum", "reduction"), ("max", "reduction"), ("take", "data_movement"),
    ("reshape", "data_movement"), ("transpose", "data_movement"), ("concat", "data_movement"),
    ("strided_slice", "data_movement"), ("split", "data_movement"), ("squeeze", "data_movement"),
    ("broadcast", "data_movement"), ("pad", "data_movement"), ("cast", "data_movement"),
)


def kernel_class(name: str) -> str:
    """The operator class of a compiled kernel or VM builtin from its name (`fused_conv2d_add_relu` -> conv)."""
    lowered = name.lower()
    if lowered.startswith("vm.builtin") or "alloc" in lowered:
        return "runtime"
    core = lowered.removeprefix("fused_")
    return next((kind for key, kind in KERNEL_CLASSES if core.startswith(key)), None) or next(
        (kind for key, kind in KERNEL_CLASSES if key in core), "elementwise")


def flatten_outputs(result) -> list:
    """VM results are a tensor or a (nested) tuple of tensors; the harness wants numpy arrays in output order."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    outputs = []
    for item in result:
        outputs.extend(flatten_outputs(item))
    return outputs


def ffi_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("apache-tvm-ffi")
    except PackageNotFoundError:
        return "unknown"


def ffi_problem() -> str | None:
    """Why MetaSchedule would crash with the installed apache-tvm-ffi, or None when it is a known-good build."""
    installed = ffi_version()
    if not installed.startswith(KNOWN_BAD_FFI):
        return None
    return (f"apache-tvm-ffi {installed} is installed, with which MetaSchedule tuning segfaults "
            f"(pip install 'apache-tvm-ffi=={KNOWN_GOOD_FFI}')")
