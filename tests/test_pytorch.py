"""The PyTorch backend with the real torch (CPU build here) and torch.compile, through the shared harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from advisor.artifact import ArtifactRequest, build_artifact
from advisor.config import default_cache_dir
from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, fp32_tolerance, run_job
from advisor.measure import HarnessSettings
from advisor.model import ModelSpec, analyze
from advisor.slo import Slo
from advisor.trials import Trial
from gpu import cuda_target, requires_cuda_torch
from hwprofiles.targets import Target, detect_targets
from search_helpers import all_proposals
from tuners.base import Candidate, TrialOutcome, TuneContext

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'advisor[pytorch]')")

from tuners.pytorch import MAX_AUTOTUNE_MIN_BUDGET_S, PyTorchSearch, PyTorchTuner, baseline_config  # noqa: E402
from tuners.pytorch_convert import UnconvertibleModel  # noqa: E402
from tuners.pytorch_runtime import RunSettings  # noqa: E402

FAST = HarnessSettings(warmup=1, min_iterations=5, min_time_s=0.05, max_time_s=0.5, bootstrap_resamples=200)
LIMITS = ExecutionLimits(timeout_s=240, memory_limit_mib=None, log_path=None)
ROOT = Path(__file__).resolve().parents[1]
TINY_CNN = ROOT / "examples" / "tiny_cnn.onnx"
CLI = (sys.executable, "-c", "from advisor.cli import main; main()")
needs_onnx2torch = pytest.mark.skipif(
    __import__("importlib").util.find_spec("onnx2torch") is None,
    reason="onnx2torch is not installed (pip install --no-deps onnx2torch==1.5.15): ONNX sources cannot convert")


@pytest.fixture(scope="module")
def cpu() -> Target:
    return detect_targets()[0]


def _ctx(path: Path, target: Target, folder: Path, source: str | None = None, budget_s: float = 30) -> TuneContext:
    return TuneContext(info=analyze(ModelSpec(path)), target=target, workdir=folder / "work",
                       cache_dir=folder / "cache", budget_s=budget_s, tolerance=0.05, source=source)


@pytest.fixture(scope="module")
def measured(cpu, tmp_path_factory):
    """The tiny CNN (an ONNX source, so converted by onnx2torch) eager and torch.compile'd, built, checked and
    timed in one child of the real harness: the most expensive thing in this file. Its cache folder is the
    advisor's own per-machine cache, as in a real run: a cold torch.compile spends ~25 s of its ~35 s here
    compiling inductor's CPU-feature probes once per machine (kept in that cache's torchinductor/)."""
    if __import__("importlib").util.find_spec("onnx2torch") is None:
        pytest.skip("onnx2torch is not installed (pip install --no-deps onnx2torch==1.5.15)")
    folder = tmp_path_factory.mktemp("pytorch")
    ctx = replace(_ctx(TINY_CNN, cpu, folder), cache_dir=default_cache_dir())
    data = ensure_reference(ctx.info, 1, folder / "data", 120, None)
    candidates = (Candidate("pytorch", "cpu", baseline_config()),
                  Candidate("pytorch", "cpu", {**baseline_config(), "mode": "compile"}))
    return ctx, run_job(MeasureJob(candidates, ctx, data, FAST, baseline=0), "confirm", LIMITS)


# ---- availability -------------------------------------------------------------------------------------------------


def test_available_on_the_cpu_and_refused_on_a_gpu_without_cuda_torch(cpu):
    tuner = PyTorchTuner()
    assert tuner.availability(cpu).available
    assert tuner.versions()["torch"] == __import__("importlib.metadata").metadata.version("torch")
    if not torch.cuda.is_available():
        refused = tuner.availability(replace(cpu, id="cuda:0", kind="cuda"))
        assert not refused.available and "cannot use CUDA here" in refused.reason


# ---- the search, without building anything -----------------------------------------------------------------------


def _with_isa(target: Target, *isa: str) -> Target:
    return replace(target, cpu=replace(target.cpu, isa=tuple(isa)))


def test_cheap_candidates_first_and_max_autotune_only_with_budget(cpu):
    target = replace(_with_isa(cpu, "avx512f", "amx_bf16"), threads=2)
    proposed = all_proposals(PyTorchSearch(target, convolutional=True, budget_s=MAX_AUTOTUNE_MIN_BUDGET_S))
    assert proposed[0] == baseline_config() and proposed[1] == {**baseline_config(), "mode": "compile"}
    changed = [next(key for key in config if config[key] != baseline_config()[key]) for config in proposed[1:]]
    assert changed == ["mode", "precision", "threads", "threads", "channels_last", "mode"]
    assert proposed[-1]["mode"] == "compile-max-autotune"
    assert not any(config["cuda_graphs"] or config["device"] != "cpu" for config in proposed)
    short = all_proposals(PyTorchSearch(_with_isa(cpu, "avx2"), convolutional=False, budget_s=30))
    assert {c["mode"] for c in short} == {"eager", "compile"}
    assert not any(c["precision"] != "fp32" or c["channels_last"] for c in short)  # no bf16 CPU, no Conv
    assert len({json.dumps(c, sort_keys=True) for c in proposed}) == len(proposed), "proposed twice"


def test_gpu_search_and_settings(cpu):
    gpu = replace(cpu, id="cuda:0", kind="cuda")
    proposed = all_proposals(PyTorchSearch(gpu, convolutional=False, budget_s=300))
    assert all(config["device"] == "cuda" for config in proposed)
    assert {config["precision"] for config in proposed} == {"fp32", "bf16", "fp16"}
    assert proposed[-1]["cuda_graphs"] and not any(config["threads"] for config in proposed)
    modes = {(mode, graphs): RunSettings(device="cuda", mode=mode, cuda_graphs=graphs).compile_mode
             for mode in ("eager", "compile", "compile-max-autotune") for graphs in (False, True)}
    assert modes == {("eager", False): None, ("eager", True): None, ("compile", False): "default",
                     ("compile", True): "reduce-overhead", ("compile-max-autotune", False): "max-autotune-no-cudagraphs",
                     ("compile-max-autotune", True): "max-autotune"}
    assert RunSettings(device="cuda", cuda_graphs=True).captures_graph
    for bad in ({"precision": "fp16"}, {"cuda_graphs": True}, {"mode": "jit"}):
        with pytest.raises(ValueError):
            RunSettings.from_config({**baseline_config(), **bad})


# ---- measured through the shared harness --------------------------------------------------------------------------


@needs_onnx2torch
def test_eager_and_compiled_candidates_are_built_checked_and_timed(measured):
    ctx, (eager, compiled) = measured
    for trial in (eager, compiled):
        assert trial.status == "ok", trial.reason
        assert trial.tolerance == pytest.approx(fp32_tolerance(trial.fp32_noise_floor))
        assert trial.max_rel_error <= trial.tolerance and trial.latency.n >= 5 and trial.latency.p50 > 0
        assert trial.details["origin"] == "onnx2torch" and trial.details["torch_version"] == torch.__version__
    assert eager.details["compile_mode"] == "eager"
    assert compiled.details["compile_mode"] == "default" and compiled.details["compile_s"] > 0.5
    assert "head_to_head" in compiled.details  # timed in alternating rounds against eager
    assert (ctx.cache_dir / "torchinductor").is_dir()  # compiled kernels kept with the advisor's caches


@needs_onnx2torch
def test_a_model_onnx2torch_cannot_convert_fails_naming_the_operator(cpu, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "det",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])])
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    ctx = _ctx(path, cpu, tmp_path)
    search = PyTorchTuner().search(ctx)
    (baseline,) = search.ask()
    # in this process (the harness records a build's exception as the failed trial's reason, type first)
    with pytest.raises(UnconvertibleModel, match="^onnx2torch cannot convert operator Det: onnx2torch 1.5.15 has "
                                                 "no converter for it$"):
        PyTorchTuner().build(baseline, ctx)
    search.tell(TrialOutcome(baseline, False, None))
    assert search.ask() == []  # the search ends at once


def test_a_pytorch_source_runs_the_module_itself(cpu, tmp_path):
    """module:callable: the user's module, called with the ONNX inputs by name, outputs mapped by name."""
    (tmp_path / "net.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); torch.manual_seed(0); self.fc = torch.nn.Linear(8, 4)\n"
        "    def forward(self, features):\n"
        "        return {'scores': self.fc(features), 'hidden': features * 2}\n"
        "def build():\n"
        "    return Net()\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import net
    finally:
        sys.path.remove(str(tmp_path))
    module = net.build().eval()
    path = tmp_path / "net.onnx"

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, features):
            out = self.inner(features)
            return out["hidden"], out["scores"]  # the ONNX outputs in another order than the module's dict

    with torch.no_grad(), pytest.warns(DeprecationWarning):
        torch.onnx.export(Flat(), (torch.randn(1, 8),), str(path), input_names=["features"],
                          output_names=["hidden", "scores"], dynamic_axes={"features": {0: "batch"}}, dynamo=False)
    ctx = _ctx(path, cpu, tmp_path, source=f"{tmp_path / 'net.py'}:build")
    model = PyTorchTuner().build(Candidate("pytorch", "cpu", baseline_config()), ctx)
    feeds = {"features": np.random.default_rng(1).standard_normal((1, 8)).astype("float32")}
    model.bind(feeds)
    model.execute()
    hidden, scores = model.outputs()
    np.testing.assert_allclose(hidden, feeds["features"] * 2, rtol=1e-6)
    np.testing.assert_allclose(scores, module(torch.from_numpy(feeds["features"]))["scores"].detach().numpy(), rtol=1e-5)
    assert model.details["origin"] == "callable"


# ---- the artifact -------------------------------------------------------------------------------------------------


@needs_onnx2torch
def test_export_verify_and_run_the_artifact(cpu, tmp_path):
    """torch.export with a dynamic batch + pytorch_config.json; `advisor verify` passes and the runner runs it;
    the loaded module serves other batch sizes with the same results."""
    ctx = _ctx(TINY_CNN, cpu, tmp_path)
    config = {**baseline_config(), "threads": 1}
    trial = Trial(id="pytorch-cpu-b1", backend="pytorch", target="cpu", config=config, batch_size=1, status="ok")
    request = ArtifactRequest(trial, ctx, Slo(1000.0, "p50"), expected={"instance": None})
    artifact = build_artifact(request, tmp_path / "artifact", timeout_s=120, log_path=None)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model/model.pt2", "model/pytorch_config.json"}
    assert manifest["requirements"] == [f"torch=={manifest['versions']['torch']}", "numpy"]
    settings = manifest["runtime"]["pytorch"]
    assert settings["format"] == "torch.export" and settings["dynamic_batch"] and settings["origin"] == "onnx2torch"
    assert settings["settings"] == RunSettings.from_config(config).to_dict()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # the two subprocesses run side by side: each spends most of its time importing torch
    verifying = subprocess.Popen([*CLI, "verify", str(artifact)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, cwd=ROOT, env=env)
    running = subprocess.Popen([sys.executable, "-m", "advisor.runtime", str(artifact.with_name("artifact.tar.gz"))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    verified, _ = verifying.communicate(timeout=120)
    ran, ran_errors = running.communicate(timeout=120)
    assert verifying.returncode == 0, verified
    assert "outputs: ok" in verified and "SLO 1000 ms: meets" in verified
    assert running.returncode == 0, ran_errors
    assert ran.startswith("logits: shape [1, 10] dtype float32 mean ")
    predict = PyTorchTuner().load_exported(artifact / "model", manifest["runtime"])
    image = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype("float32")
    together = predict({"image": image})[0]
    alone = [predict({"image": image[i:i + 1]})[0][0] for i in range(3)]
    assert together.shape == (3, 10)
    np.testing.assert_allclose(together, np.stack(alone), rtol=1e-4, atol=1e-5)


# ---- on a GPU (skipped here with the reason) ------------------------------------------------------------------------


@requires_cuda_torch
def test_cuda_candidates_are_timed_with_cuda_events(tmp_path):
    """eager fp32, eager with a captured CUDA graph, fp16 autocast, and torch.compile reduce-overhead on the GPU:
    each checked against the reference (fp16 held to --tolerance) and timed with CUDA events too."""
    target = cuda_target()
    ctx = _ctx(TINY_CNN, target, tmp_path)
    data = ensure_reference(ctx.info, 1, tmp_path / "data", 120, None)
    base = baseline_config("cuda")
    configs = [base, {**base, "cuda_graphs": True}, {**base, "precision": "fp16"},
               {**base, "mode": "compile", "cuda_graphs": True}]
    trials = run_job(MeasureJob(tuple(Candidate("pytorch", target.id, c) for c in configs), ctx, data, FAST),
                     "confirm", LIMITS)
    for trial in trials:
        assert trial.status == "ok", (trial.config, trial.reason)
        assert trial.details["device"].startswith("cuda") and trial.details["cuda_event_ms_p50"] > 0
        assert trial.details["cuda_event_runs"] == 20 and trial.latency.n >= 5
    assert trials[2].tolerance == pytest.approx(max(0.05, fp32_tolerance(trials[2].fp32_noise_floor)))


def test_the_gpu_check_script_refuses_a_machine_without_a_gpu(tmp_path):
    """bench/gpu_check.sh stops at once with exit 2 and says why, and leaves its log in the results folder."""
    if __import__("shutil").which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the refusal cannot be seen here")
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, RESULTS=str(tmp_path / "results")))
    assert done.returncode == 2
    message = "gpu_check: error: no nvidia-smi: this machine has no NVIDIA GPU (the check needs one)\n"
    assert done.stdout == message and (tmp_path / "results" / "gpu-check.log").read_text() == message
