"""The TensorRT backend. Availability, configurations, the fp16 model copy, cache keys and plan portability run
everywhere; building, measuring and exporting engines need an NVIDIA GPU with tensorrt (skipped with the reason)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, load_reference, run_job
from advisor.measure import HarnessSettings
from advisor.model import ModelSpec, analyze
from gpu import cuda_target, gpu_reason, requires_tensorrt
from hwprofiles.targets import GpuInfo, Target, detect_cpu, detect_targets
from tuners import tensorrt_engine as trt_lib
from tuners.base import Candidate, TrialOutcome, TuneContext
from tuners.registry import load_tuner, tuner_names
from tuners.tensorrt import TensorRtSearch, TensorRtTuner

FAST = HarnessSettings(warmup=2, min_iterations=10, min_time_s=0.05, max_time_s=2.0, bootstrap_resamples=200)
ROOT = Path(__file__).resolve().parents[1]


def fake_cuda_target(name: str = "NVIDIA A10G", capability: str = "8.6", cuda: str = "12.2") -> Target:
    """A GPU target as detect_targets() would build it on a GPU host; here no GPU stands behind it."""
    gpu = GpuInfo(index=0, name=name, memory_gib=22.0, compute_capability=capability, driver_version="535.104.05",
                  cuda_version=cuda, catalog_type="A10G")
    return Target(id="cuda:0", kind="cuda", cpu=detect_cpu(), gpu=gpu)


def install(**changes) -> trt_lib.TrtInstall:
    """A complete, working TensorRT 11 stack for CUDA 12, with `changes` applied."""
    base = trt_lib.TrtInstall(tensorrt_version="11.4.0.106", tensorrt_error=None, tensorrt_cuda_major=12,
                              builder_fp16_flag=False, binding="cuda-python", binding_version="12.9.0",
                              binding_cuda="12.9", driver_cuda="12.2")
    return replace(base, **changes)


def _ctx(path: Path, target: Target, tmp_path: Path, batch_size: int = 1, **shapes) -> TuneContext:
    return TuneContext(info=analyze(ModelSpec(path, shapes)), target=target, workdir=tmp_path / "work",
                       cache_dir=tmp_path / "cache", budget_s=60, tolerance=0.05, batch_size=batch_size)


def qdq_model() -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> MatMul: the shape of an explicitly quantised (Q/DQ) model."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
             numpy_helper.from_array(np.array(0, np.int8), "zero"),
             numpy_helper.from_array((rng.standard_normal((16, 4)) * 0.1).astype(np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"], name="quant"),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"], name="dequant"),
             helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --- availability ---------------------------------------------------------------------------------------------


def test_registered_and_loaded_lazily():
    assert "tensorrt" in tuner_names()
    assert isinstance(load_tuner("tensorrt"), TensorRtTuner)
    # The artifact runner imports the tuner with only numpy, tensorrt and a binding library installed.
    heavy = "{'tensorrt', 'onnx', 'onnxruntime', 'torch'}"
    probe = f"import sys, tuners.tensorrt; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cpu_target_is_not_for_tensorrt():
    availability = TensorRtTuner().availability(detect_targets()[0])
    assert not availability.available
    assert availability.reason == "TensorRT runs only on NVIDIA GPUs"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_gpu_target_without_tensorrt_gets_the_install_hint():
    availability = TensorRtTuner().availability(fake_cuda_target())
    assert not availability.available
    assert availability.reason == "tensorrt not installed (pip install 'advisor[tensorrt]')"
    assert "tensorrt" not in TensorRtTuner().versions()


@pytest.mark.parametrize("changes, expected", [
    ({}, None),
    ({"tensorrt_version": None}, "tensorrt not installed (pip install 'advisor[tensorrt]')"),
    ({"tensorrt_version": None, "tensorrt_error": "OSError: libnvinfer.so.11: cannot open shared object file"},
     ("tensorrt is installed but cannot be loaded (OSError: libnvinfer.so.11: cannot open shared object file); "
      "reinstall it (pip install 'advisor[tensorrt]')")),
    ({"binding": None, "binding_version": None, "binding_cuda": None},
     ("cuda-python not installed (pip install 'advisor[tensorrt]', which installs it; PyTorch built with CUDA "
      "works too): TensorRT needs it for device memory and streams")),
    ({"tensorrt_cuda_major": 13},
     ("CUDA driver too old: driver 535.104.05 supports CUDA 12.2, tensorrt 11.4.0.106 is built for CUDA 13; "
      "update the NVIDIA driver or install tensorrt-cu12")),
    ({"binding_cuda": "13.0", "binding_version": "13.0.1"},
     ("CUDA driver too old: driver 535.104.05 supports CUDA 12.2, cuda-python 13.0.1 is built for CUDA 13.0; "
      "update the NVIDIA driver or install cuda-python for CUDA 12")),
    ({"driver_cuda": None},
     ("the NVIDIA driver's CUDA library (libcuda.so) cannot be loaded although nvidia-smi works; in a container, "
      "enable the 'compute' driver capability (NVIDIA_DRIVER_CAPABILITIES=compute,utility)")),
    ({"binding": "torch", "binding_version": "2.13.0+cu126", "binding_cuda": "12.6", "driver_cuda": None}, None),
])
def test_unavailable_reasons(changes, expected):
    assert trt_lib.unavailable_reason(fake_cuda_target(), install(**changes)) == expected


def test_driver_version_from_the_binding_when_nvidia_smi_has_none():
    target = fake_cuda_target(cuda="unknown")
    assert trt_lib.unavailable_reason(target, install(driver_cuda="11.8")).startswith(
        "CUDA driver too old: driver 535.104.05 supports CUDA 11.8")


def test_cpu_target_reason_does_not_depend_on_the_installation():
    assert trt_lib.unavailable_reason(detect_targets()[0], install()) == "TensorRT runs only on NVIDIA GPUs"


@pytest.mark.skipif(gpu_reason() is None, reason="this checks the no-GPU error path")
def test_cuda_python_reports_a_missing_driver_as_an_error():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (pip install 'advisor[tensorrt]')")
    library, version, built_for, driver = trt_lib.probe_binding()
    assert library == "cuda-python" and version and built_for
    assert driver is None  # no libcuda here
    with pytest.raises(trt_lib.CudaError, match=r"cudaSetDevice\(0\) failed: cudaError"):
        trt_lib.load_binding().set_device(0)


@pytest.mark.parametrize("visible, gpu, expected", [
    (None, 3, 3), ("", 1, 1), ("2,3", 3, 1), ("3", 3, 0), ("GPU-1c2d,GPU-99aa", 1, 1),
])
def test_cuda_device_index_follows_cuda_visible_devices(visible, gpu, expected):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert trt_lib.cuda_device_index(gpu, environ) == expected


def test_hidden_gpu_is_an_error():
    with pytest.raises(trt_lib.CudaError, match="hidden by CUDA_VISIBLE_DEVICES=1"):
        trt_lib.cuda_device_index(0, {"CUDA_VISIBLE_DEVICES": "1"})


# --- configurations -------------------------------------------------------------------------------------------


def _drain(search, latency_of=lambda c: 1.0):
    """Every batch the search asks for, telling each candidate back as measured."""
    batches = []
    while batch := search.ask():
        batches.append([c.config for c in batch])
        for candidate in batch:
            search.tell(TrialOutcome(candidate, True, latency_of(candidate)))
    return batches


def test_search_asks_baseline_first_then_precision_level_and_graph():
    search = TensorRtSearch("cuda:0", qdq=False, builder_fp16_flag=False)
    fp16_fastest = _drain(search, lambda c: (1.0 if c.config["precision"] == "fp16" else 2.0)
                          - 0.1 * (c.config["builder_optimization_level"] == 5))
    baseline = {"precision": "fp32", "builder_optimization_level": 3, "cuda_graph": False}
    assert fp16_fastest == [
        [baseline],
        [{**baseline, "precision": "tf32"}, {**baseline, "precision": "fp16", "fp16_source": "cast-model"}],
        [{**baseline, "precision": "fp16", "fp16_source": "cast-model", "builder_optimization_level": 5}],
        [{**baseline, "precision": "fp16", "fp16_source": "cast-model", "builder_optimization_level": 5,
          "cuda_graph": True}],
    ]
    for batch in fp16_fastest:
        for config in batch:
            assert json.loads(json.dumps(config)) == config
            assert config["precision"] in trt_lib.PRECISIONS


def test_tensorrt_10_gets_fp16_from_the_builder_flag():
    batches = _drain(TensorRtSearch("cuda:0", qdq=False, builder_fp16_flag=True))
    assert batches[1][1] == {"precision": "fp16", "fp16_source": "builder-flag", "builder_optimization_level": 3,
                             "cuda_graph": False}


def test_no_int8_without_qdq_nodes(cnn_path, tmp_path):
    ctx = _ctx(cnn_path, fake_cuda_target(), tmp_path)
    assert not trt_lib.has_qdq(ctx.info.op_histogram)
    configs = [config for batch in _drain(TensorRtTuner().search(ctx)) for config in batch]
    assert configs[0]["precision"] == "fp32"
    assert not any("int8" in config["precision"] for config in configs)


def test_qdq_model_runs_its_own_int8(tmp_path):
    path = models.save(qdq_model(), tmp_path / "qdq.onnx")
    info = analyze(ModelSpec(path))
    assert trt_lib.has_qdq(info.op_histogram)
    trt11 = _drain(TensorRtSearch("cuda:0", qdq=True, builder_fp16_flag=False))
    assert trt11[0] == [{"precision": "int8", "builder_optimization_level": 3, "cuda_graph": False}]
    assert all(config["precision"] == "int8" for batch in trt11 for config in batch)  # nothing to add on TRT 11
    trt10 = _drain(TensorRtSearch("cuda:0", qdq=True, builder_fp16_flag=True))
    assert trt10[1] == [{"precision": "int8+fp16", "fp16_source": "builder-flag", "builder_optimization_level": 3,
                         "cuda_graph": False}]


def test_failed_baseline_ends_the_search():
    search = TensorRtSearch("cuda:0", qdq=False, builder_fp16_flag=False)
    (baseline,) = search.ask()
    search.tell(TrialOutcome(baseline, False, None))
    assert search.ask() == []


@pytest.mark.parametrize("precision, source, legacy, expected", [
    ("fp32", None, False, trt_lib.BuildRecipe(True, (), False, False)),
    ("tf32", None, False, trt_lib.BuildRecipe(True, (), True, False)),
    ("fp16", "cast-model", False, trt_lib.BuildRecipe(True, (), True, True)),
    ("fp16", None, False, trt_lib.BuildRecipe(True, (), True, True)),
    ("fp16", "builder-flag", True, trt_lib.BuildRecipe(False, ("FP16",), True, False)),
    ("fp16", "cast-model", True, trt_lib.BuildRecipe(True, (), True, True)),
    ("int8", None, False, trt_lib.BuildRecipe(True, (), False, False)),
    ("int8+fp16", "builder-flag", True, trt_lib.BuildRecipe(False, ("INT8", "FP16"), True, False)),
])
def test_build_recipes(precision, source, legacy, expected):
    assert trt_lib.build_recipe(precision, source, legacy) == expected


def test_build_recipe_refuses_what_the_installed_tensorrt_cannot_do():
    with pytest.raises(trt_lib.EngineBuildError, match="removed in TensorRT 11"):
        trt_lib.build_recipe("fp16", "builder-flag", builder_fp16_flag=False)
    with pytest.raises(trt_lib.EngineBuildError, match="builder flags"):
        trt_lib.build_recipe("int8+fp16", None, builder_fp16_flag=False)
    with pytest.raises(ValueError, match="unknown TensorRT precision 'bf16'"):
        trt_lib.build_recipe("bf16", None, builder_fp16_flag=True)


# --- the fp16 copy --------------------------------------------------------------------------------------------


def _run_cpu(path: Path, feeds: dict) -> list:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("name, shapes", [("cnn", {}), ("encoder", {"input_ids": (1, 16), "attention_mask": (1, 16)})])
def test_fp16_copy_is_valid_and_close_to_fp32(model_dir, tmp_path, name, shapes):
    source = model_dir / f"{name}.onnx"
    copy = trt_lib.fp16_model_path(source, tmp_path)
    assert copy == tmp_path / f"{name}.fp16.onnx"
    model = onnx.load(str(copy))
    onnx.checker.check_model(model, full_check=True)  # also checks the node order
    original = onnx.load(str(source))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == \
        [i.type.tensor_type.elem_type for i in original.graph.input]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    float_weights = [i for i in model.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert float_weights and all(i.data_type == TensorProto.FLOAT16 for i in float_weights
                                 if len(i.dims) > 1)  # the weight matrices are fp16 now
    from advisor.feeds import make_feeds

    feeds = make_feeds(analyze(ModelSpec(source, shapes)), 2)
    expected, got = _run_cpu(source, feeds)[0], _run_cpu(copy, feeds)[0]
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-2
    stamp = copy.stat().st_mtime_ns
    assert trt_lib.fp16_model_path(source, tmp_path) == copy and copy.stat().st_mtime_ns == stamp  # made once


def test_topological_sort_follows_producers_and_subgraph_reads():
    then_branch = helper.make_graph([helper.make_node("Identity", ["b"], ["t"], name="inner")], "then", [],
                                    [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["a"], ["e"], name="inner2")], "else", [],
                                    [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])])
    nodes = [
        helper.make_node("If", ["cond"], ["out"], name="if", then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),  # read inside the If's then-branch only
        helper.make_node("Neg", ["x"], ["a"], name="neg"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    trt_lib.topologically_sort(graph)
    assert [n.name for n in graph.node] == ["neg", "relu", "if"]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)


# --- cache keys and profiles ----------------------------------------------------------------------------------


def test_timing_cache_is_keyed_by_gpu_model_and_tensorrt_version(tmp_path):
    path = trt_lib.timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "9.0", "11.4.0.106")
    assert path == tmp_path / "tensorrt" / "nvidia-h100-80gb-hbm3-sm90-trt11.4.0.106" / "timing.cache"
    assert trt_lib.timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "9.0", "11.4.0.106") == path
    others = {trt_lib.timing_cache_path(tmp_path, "NVIDIA A10G", "8.6", "11.4.0.106"),
              trt_lib.timing_cache_path(tmp_path, "NVIDIA H100 80GB HBM3", "9.0", "10.16.1.11"),
              trt_lib.timing_cache_path(tmp_path, "NVIDIA H100 PCIe", "9.0", "11.4.0.106")}
    assert path not in others and len(others) == 3


def test_engine_files_are_keyed_by_build_config_batch_model_and_version(tmp_path):
    config = {"precision": "fp32", "builder_optimization_level": 3, "cuda_graph": False}
    path = trt_lib.engine_path(tmp_path, config, 1, "ab" * 32, "11.4.0.106")
    assert path.parent == tmp_path / "engines" and path.name.endswith("-b1.plan")
    assert trt_lib.engine_path(tmp_path, dict(reversed(list(config.items()))), 1, "ab" * 32, "11.4.0.106") == path
    variants = [trt_lib.engine_path(tmp_path, {**config, "precision": "fp16"}, 1, "ab" * 32, "11.4.0.106"),
                trt_lib.engine_path(tmp_path, config, 8, "ab" * 32, "11.4.0.106"),
                trt_lib.engine_path(tmp_path, config, 1, "cd" * 32, "11.4.0.106"),
                trt_lib.engine_path(tmp_path, config, 1, "ab" * 32, "10.16.1.11")]
    assert len({path, *variants}) == 5
    assert trt_lib.engine_path(tmp_path, {**config, "cuda_graph": True}, 1, "ab" * 32, "11.4.0.106") == path


def test_profile_tunes_for_the_batch_and_accepts_smaller(cnn_path, encoder_path):
    cnn = analyze(ModelSpec(cnn_path))
    assert trt_lib.profile_shapes(cnn, 4) == {"image": ((1, 3, 64, 64), (4, 3, 64, 64), (4, 3, 64, 64))}
    encoder = analyze(ModelSpec(encoder_path, {"input_ids": (1, 32), "attention_mask": (1, 32)}))
    assert trt_lib.profile_shapes(encoder, 2)["input_ids"] == ((1, 32), (2, 32), (2, 32))


def test_fixed_batch_model_gets_a_fixed_profile(tmp_path):
    model = models.tiny_mlp()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    info = analyze(ModelSpec(models.save(model, tmp_path / "fixed.onnx")))
    assert trt_lib.profile_shapes(info, 1) == {"x": ((3, 64), (3, 64), (3, 64))}


# --- errors and portability -----------------------------------------------------------------------------------


def test_parser_errors_name_the_node_and_operator():
    problems = [trt_lib.ParserProblem(7, "attn/Einsum_3", "Einsum", "Unsupported equation bij,bjk->bik..."),
                trt_lib.ParserProblem(9, "x", "Foo", "No importer registered for op: Foo")]
    assert trt_lib.format_parser_problems(problems, Path("/m/model.onnx")) == (
        "TensorRT's ONNX parser failed at node 'attn/Einsum_3' (Einsum, #7) of model.onnx: Unsupported equation "
        "bij,bjk->bik... (+1 more)")
    assert "failed at the graph" in trt_lib.format_parser_problems([trt_lib.ParserProblem(-1, "", "", "bad")],
                                                                   Path("m.onnx"))


def test_plan_portability_check():
    built_for = {"tensorrt_version": "11.4.0.106", "compute_capability": "8.6", "gpu_name": "NVIDIA A10G"}
    assert trt_lib.plan_problems(built_for, "11.4.0.106", "8.6") == []
    problems = trt_lib.plan_problems(built_for, "10.16.1.11", "9.0")
    assert problems == ["the plan was built with TensorRT 11.4.0.106, this is 10.16.1.11",
                        "the plan was built for compute capability 8.6 (NVIDIA A10G), this GPU has 9.0"]


# --- on a GPU -------------------------------------------------------------------------------------------------


def _measure(ctx, candidates, phase="search"):
    data = ensure_reference(ctx.info, ctx.batch_size, ctx.workdir.parent / "data", 120, None)
    limits = ExecutionLimits(timeout_s=600, memory_limit_mib=None, log_path=None)
    return run_job(MeasureJob(tuple(candidates), ctx, data, FAST), phase, limits)


@requires_tensorrt
def test_engines_are_built_measured_and_reused(cnn_path, tmp_path):
    ctx = _ctx(cnn_path, cuda_target(), tmp_path)
    search = TensorRtTuner().search(ctx)
    (baseline,) = search.ask()
    (trial,) = _measure(ctx, [baseline])
    assert trial.status == "ok", trial.reason
    assert trial.max_rel_error < 1e-3 and trial.latency.n >= 10
    details = trial.details
    assert details["engine_reused"] is False and details["engine_build_s"] > 0
    assert details["h2d_ms"] > 0 and details["d2h_ms"] > 0
    assert 0 < details["cuda_event_ms_p50"] <= trial.latency.p50 * 1.5
    assert Path(details["timing_cache"]).is_file()
    search.tell(TrialOutcome(baseline, True, trial.latency.p50))
    variants = search.ask()
    trials = _measure(ctx, [baseline, *variants], phase="confirm")  # interleaved, in one child
    assert trials[0].details["engine_reused"] is True
    fp16 = next(t for t in trials if t.config["precision"] == "fp16")
    assert fp16.status == "ok", fp16.reason
    assert len(list((ctx.workdir / "engines").glob("*.plan"))) == 3


@requires_tensorrt
def test_dynamic_batch_and_cuda_graph(encoder_path, tmp_path):
    ctx = _ctx(encoder_path, cuda_target(), tmp_path, batch_size=4, input_ids=(1, 16), attention_mask=(1, 16))
    config = {**trt_lib.baseline_config(False), "cuda_graph": True}
    (trial,) = _measure(ctx, [Candidate("tensorrt", ctx.target.id, config)])
    assert trial.status == "ok", trial.reason
    assert trial.details["profile"]["input_ids"] == {"min": [1, 16], "opt": [4, 16], "max": [4, 16]}


@requires_tensorrt
def test_export_and_load_exported(cnn_path, tmp_path):
    tuner = TensorRtTuner()
    ctx = _ctx(cnn_path, cuda_target(), tmp_path, batch_size=2)
    candidate = Candidate("tensorrt", ctx.target.id, trt_lib.baseline_config(False))
    exported = tuner.export(candidate, ctx, tmp_path / "artifact")
    assert {p.name for p in exported.files} == {"model.plan", "engine.json"}
    built_for = json.loads((tmp_path / "artifact" / "engine.json").read_text())
    assert built_for["gpu_name"] and built_for["compute_capability"] == ctx.target.gpu.compute_capability
    assert built_for["tensorrt_version"] == tuner.versions()["tensorrt"]
    assert [b["name"] for b in built_for["bindings"]] == ["image", "logits"]
    assert any(r.startswith("tensorrt") for r in exported.requirements)
    predict = tuner.load_exported(tmp_path / "artifact", exported.runtime)
    ref = load_reference(ensure_reference(ctx.info, 2, tmp_path / "data", 120, None))
    feeds, reference = ref.feeds, ref.outputs
    np.testing.assert_allclose(predict(feeds)[0], reference[0], rtol=1e-3, atol=1e-4)
    one = {name: value[:1] for name, value in feeds.items()}  # smaller batches fit the profile too
    np.testing.assert_allclose(predict(one)[0], reference[0][:1], rtol=1e-3, atol=1e-4)


@requires_tensorrt
def test_parser_error_names_the_failing_node(tmp_path):
    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery", domain="com.example")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    path = models.save(model, tmp_path / "bad.onnx")
    info = replace(analyze(ModelSpec(models.save(models.tiny_mlp(), tmp_path / "mlp.onnx"))), path=path,
                   sha256="0" * 64)
    ctx = TuneContext(info=info, target=cuda_target(), workdir=tmp_path / "work", cache_dir=tmp_path / "cache",
                      budget_s=60, tolerance=0.05)
    with pytest.raises(trt_lib.EngineBuildError, match=r"failed at node 'mystery' \(NoSuchOp"):
        TensorRtTuner().build(Candidate("tensorrt", ctx.target.id, trt_lib.baseline_config(False)), ctx)
