"""The OpenVINO backend against the real OpenVINO runtime on the tiny test models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from advisor.artifact import ArtifactRequest, build_artifact
from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, fp32_tolerance, run_job
from advisor.measure import HarnessSettings
from advisor.model import ModelSpec, analyze
from advisor.slo import Slo
from advisor.trials import Trial
from hwprofiles.targets import RpcDevice, Target, cpu_computes_bf16, detect_targets
from search_helpers import all_proposals
from tuners.base import Candidate, TuneContext

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'advisor[openvino]')")

from tuners.openvino import OpenVinoSearch, OpenVinoTuner, baseline_config  # noqa: E402

VERSION = ov.__version__.split("-")[0]  # "2026.4.1-22982-...": the build's tail is not the package version
FAST = HarnessSettings(warmup=1, min_iterations=5, min_time_s=0.05, max_time_s=1.0, bootstrap_resamples=200)
LIMITS = ExecutionLimits(timeout_s=120, memory_limit_mib=None, log_path=None)
ROOT = Path(__file__).resolve().parents[1]
CLI = (sys.executable, "-c", "from advisor.cli import main; main()")


@pytest.fixture(scope="module")
def cpu() -> Target:
    return detect_targets()[0]


@pytest.fixture(scope="module")
def machine_bf16(cpu) -> bool:
    return cpu_computes_bf16(cpu.cpu.isa)


def _ctx(path: Path, target: Target, tmp_path: Path, tolerance: float = 0.05) -> TuneContext:
    return TuneContext(info=analyze(ModelSpec(path)), target=target, workdir=tmp_path / "work",
                       cache_dir=tmp_path / "cache", budget_s=30, tolerance=tolerance)


def _with_isa(target: Target, *isa: str) -> Target:
    return replace(target, cpu=replace(target.cpu, isa=tuple(isa)))


# ---- availability ---------------------------------------------------------------------------------------------


def test_available_on_this_cpu_with_its_version(cpu):
    tuner = OpenVinoTuner()
    assert tuner.availability(cpu).available
    assert tuner.versions() == {"openvino": VERSION}


def test_refused_on_a_gpu_and_on_a_tvm_rpc_device(cpu):
    tuner = OpenVinoTuner()
    gpu = replace(cpu, id="cuda:0", kind="cuda")
    assert "CPUs only" in tuner.availability(gpu).reason
    remote = replace(cpu, id="rpc:board", rpc=RpcDevice("127.0.0.1", 9190, "board"))
    refused = tuner.availability(remote)
    assert not refused.available and refused.reason == "a TVM RPC device runs only code built for it by tvm"


def test_unavailable_with_the_install_hint_when_openvino_is_missing(cpu):
    """A fresh interpreter in which `import openvino` fails, as it does where the package is not installed."""
    script = ("import sys; sys.modules['openvino'] = None\n"  # makes `import openvino` raise ImportError
              "from hwprofiles.targets import detect_targets\n"
              "from tuners.registry import load_tuner\n"
              "print(load_tuner('openvino').availability(detect_targets()[0]).reason)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "openvino is not installed (pip install 'advisor[openvino]')\n"


# ---- bf16 only where the CPU computes it ----------------------------------------------------------------------


@pytest.mark.parametrize("isa, expected", [
    (("sse4_2", "avx", "avx2", "fma"), False),  # Zen 3
    (("avx2", "avx512f", "avx512bw", "avx512_vnni"), False),  # AVX-512 without bf16 (Ice Lake, Cascade Lake)
    (("avx2", "avx512f", "avx512_vnni", "avx512_bf16"), True),  # Zen 4
    (("avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"), True),  # Sapphire Rapids
    (("amx_tile", "amx_bf16"), True),
    (("neon", "asimd", "bf16"), False),  # Arm's bf16 flag: not the x86 kernels OpenVINO's bf16 hint means here
    ((), False),
])
def test_bf16_detection_from_isa_flags(isa, expected):
    assert cpu_computes_bf16(isa) is expected


@pytest.mark.parametrize("isa", [("avx2",), ("avx512f", "amx_bf16")])
def test_the_search_offers_bf16_only_where_the_cpu_has_it(cpu, isa):
    proposed = all_proposals(OpenVinoSearch(_with_isa(cpu, *isa)))
    assert proposed[0] == baseline_config() and baseline_config()["precision"] == "fp32"
    assert any(c["precision"] == "bf16" for c in proposed) is cpu_computes_bf16(isa)
    assert {c["performance_hint"] for c in proposed} == {"LATENCY", "THROUGHPUT"}
    assert {c["inference_num_threads"] for c in proposed} >= {0, 1}
    assert len({json.dumps(c, sort_keys=True) for c in proposed}) == len(proposed), "proposed twice"


def test_bf16_detection_agrees_with_the_plugin_on_this_machine(cpu, machine_bf16):
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert machine_bf16 == ("BF16" in capabilities), (cpu.cpu.isa, capabilities)


def test_fp32_is_compiled_as_fp32_even_where_the_plugin_defaults_to_bf16(cpu, machine_bf16, cnn_path, tmp_path):
    """On AMX machines the CPU plugin's own default precision is bf16: the fp32 candidate must not be that."""
    tuner, ctx = OpenVinoTuner(), _ctx(cnn_path, cpu, tmp_path)
    assert tuner.build(Candidate("openvino", "cpu", baseline_config()), ctx).details["inference_precision"] == "f32"
    bf16 = Candidate("openvino", "cpu", {**baseline_config(), "precision": "bf16"})
    if machine_bf16:
        assert tuner.build(bf16, ctx).details["inference_precision"] == "bf16"
    else:  # never measured under a name it does not have: refused by the plugin or by the read-back check
        with pytest.raises(RuntimeError):
            tuner.build(bf16, ctx)


# ---- measured through the shared harness, checked against the reference ---------------------------------------


def test_candidates_are_timed_and_checked_like_every_backend(cpu, machine_bf16, cnn_path, tmp_path):
    """One child, the shared harness: fp32 within the model's calibrated fp32 tolerance; bf16 held to --tolerance
    but never tighter than that, so with --tolerance 1e-9 it is rejected with its error and the tolerance, and
    with --tolerance 0.05 accepted (the tiny CNN's bf16 error: ~0.5 %)."""
    loose = _ctx(cnn_path, cpu, tmp_path, tolerance=0.05)
    strict = replace(loose, tolerance=1e-9)
    data = ensure_reference(loose.info, 1, tmp_path / "data", 120, None)
    fp32 = Candidate("openvino", "cpu", baseline_config())
    if not machine_bf16:
        (trial,) = run_job(MeasureJob((fp32,), strict, data, FAST), "search", LIMITS)
        assert trial.status == "ok" and trial.latency.n >= 5 and trial.max_rel_error <= trial.tolerance
        pytest.skip(f"bf16 part: this CPU has no AVX-512-BF16 or AMX ({' '.join(cpu.cpu.isa)})")
    bf16 = Candidate("openvino", "cpu", {**baseline_config(), "precision": "bf16"})
    trials = run_job(MeasureJob((fp32, bf16, bf16), strict, data, FAST, contexts=(strict, strict, loose)),
                     "confirm", LIMITS)
    assert [t.status for t in trials] == ["ok", "rejected", "ok"], [t.reason for t in trials]
    accurate, rejected, accepted = trials
    assert accurate.tolerance == pytest.approx(fp32_tolerance(accurate.fp32_noise_floor))
    assert accurate.max_rel_error < 1e-5 and accurate.latency.n >= 5
    assert rejected.tolerance == pytest.approx(fp32_tolerance(rejected.fp32_noise_floor))
    assert rejected.max_rel_error > rejected.tolerance and rejected.latency is None
    assert f"tolerance {rejected.tolerance:.3g}" in rejected.reason
    assert accepted.tolerance == 0.05 and accepted.max_rel_error <= 0.05 and accepted.latency.n >= 5
    assert accepted.details["inference_precision"] == "bf16"


# ---- the artifact ---------------------------------------------------------------------------------------------


def test_export_verify_and_run_the_artifact(cpu, machine_bf16, cnn_path, tmp_path):
    """IR + compile config, packaged like every artifact; `advisor verify` passes (outputs and SLO) and the
    runner `python -m advisor.runtime` runs it with sample inputs."""
    ctx = _ctx(cnn_path, cpu, tmp_path)
    config = {**baseline_config(), "inference_num_threads": 1, "precision": "bf16" if machine_bf16 else "fp32"}
    trial = Trial(id="openvino-cpu-b1", backend="openvino", target="cpu", config=config, batch_size=1, status="ok")
    request = ArtifactRequest(trial, ctx, Slo(1000.0, "p50"), expected={"instance": None})
    artifact = build_artifact(request, tmp_path / "artifact", timeout_s=120, log_path=None)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model/model.xml", "model/model.bin", "model/compile_config.json"}
    assert manifest["requirements"] == [f"openvino=={manifest['versions']['openvino']}", "numpy"]
    properties = manifest["runtime"]["openvino"]["properties"]
    assert properties == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": "1",
                          "INFERENCE_PRECISION_HINT": "bf16" if machine_bf16 else "f32"}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    verified = subprocess.run([*CLI, "verify", str(artifact)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    ran = subprocess.run([sys.executable, "-m", "advisor.runtime", str(artifact.with_name("artifact.tar.gz"))],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("logits: shape [1, 10] dtype float32 mean ")


def test_the_runner_compiles_for_other_input_shapes(cpu, cnn_path, tmp_path):
    """The IR keeps the model's own shapes: a batch other than the manifest's gets its own compilation."""
    import numpy as np

    tuner, ctx = OpenVinoTuner(), _ctx(cnn_path, cpu, tmp_path)
    exported = tuner.export(Candidate("openvino", "cpu", baseline_config()), ctx, tmp_path / "model")
    predict = tuner.load_exported(tmp_path / "model", exported.runtime)
    image = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype("float32")
    together = predict({"image": image})[0]
    alone = [predict({"image": image[i:i + 1]})[0][0] for i in range(3)]
    assert together.shape == (3, 10)
    np.testing.assert_allclose(together, np.stack(alone), rtol=1e-4, atol=1e-5)


# ---- end to end -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_recommend_lists_measured_openvino_trials(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [*CLI, "recommend", "examples/tiny_cnn.onnx", "--slo", "50ms", "--backends", "onnxruntime,openvino",
         "--budget", "30s", "--out", str(out), "--quiet", "--no-artifact"],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode in (0, 3), done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    status = next(b for b in report["backends"] if b["backend"] == "openvino")
    assert status["available"] and status["versions"] == {"openvino": VERSION}
    assert report["environment"]["packages"]["openvino"] == status["versions"]["openvino"]
    trials = [t for t in report["trials"] if t["backend"] == "openvino"]
    searched = [t for t in trials if t["phase"] == "search"]
    assert searched and searched[0]["config"] == baseline_config()
    for trial in trials:  # every one built, checked against the fp32 reference, and (unless rejected) timed
        if trial["status"] == "failed":  # only a worker still busy at its phase's deadline (a busy machine)
            assert trial["reason"].startswith("worker timed out"), trial["reason"]
            continue
        assert trial["status"] in ("ok", "skipped", "rejected"), trial["reason"]
        assert trial["max_rel_error"] is not None and trial["tolerance"] is not None
        if trial["status"] == "ok":
            assert trial["max_rel_error"] <= trial["tolerance"] and trial["latency_ms"]["n"] >= 10
    assert any(t["status"] == "ok" for t in searched)
