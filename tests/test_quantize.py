"""Static int8 with the real quantisers: ONNX Runtime QDQ (tuners/ort_quantize.py) and NNCF for OpenVINO
(tuners/openvino_quantize.py), calibrated on synthetic samples or on a SampleSet saved like the pipeline saves it."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from advisor import sample_data
from advisor.artifact import ArtifactRequest, build_artifact
from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, load_reference, run_job
from advisor.measure import HarnessSettings, compare_outputs
from advisor.model import ModelSpec, analyze
from advisor.slo import Slo
from advisor.trials import Trial
from advisor.verify import verify
from hwprofiles.targets import detect_targets
from tuners.base import Candidate, TrialOutcome, TuneContext
from tuners.onnxruntime import OnnxRuntimeTuner, OrtSearch, stock_config
from tuners.ort_quantize import StaticQuantization, error_ranking, quantize

FAST = HarnessSettings(warmup=1, min_iterations=5, min_time_s=0.05, max_time_s=0.5, bootstrap_resamples=200)
LIMITS = ExecutionLimits(timeout_s=180, memory_limit_mib=None, log_path=None)
STATIC = {**stock_config(), "stock": False, "precision": "int8-static", "calibration": "minmax", "exclude_worst": 0}


@pytest.fixture(scope="module")
def cpu():
    return detect_targets()[0]


def _ctx(path: Path, target, workdir: Path, calibration: Path | None = None) -> TuneContext:
    return TuneContext(info=analyze(ModelSpec(path)), target=target, workdir=workdir, cache_dir=workdir / "cache",
                       budget_s=30, tolerance=0.05, calibration_path=calibration)


def _error(model_path: Path, quantized_path: Path, feeds) -> float:
    import onnxruntime as ort

    want = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(quantized_path), providers=["CPUExecutionProvider"]).run(None, feeds)
    return compare_outputs(got, want, float("inf")).max_rel_error


def spike_mlp(features: int = 64, seed: int = 0) -> onnx.ModelProto:
    """An MLP whose error concentrates in one place: a Mul scales one channel by 1000 (and the next MatMul scales
    it back), so the per-tensor uint8 quantisation of that tensor leaves the other channels no resolution."""
    rng = np.random.default_rng(seed)
    scale = np.ones(features, np.float32)
    scale[3] = 1000.0
    w2 = (rng.standard_normal((features, 8)) * 0.1).astype(np.float32)
    w2[3] /= 1000.0
    inits = [numpy_helper.from_array((rng.standard_normal((features, features)) * 0.1).astype(np.float32), "w1"),
             numpy_helper.from_array(scale, "spike_scale"), numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Mul", ["h", "spike_scale"], ["spiked"], name="spike"),
             helper.make_node("MatMul", ["spiked", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "spike_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], inits)
    return models._model(graph)


# ---- the search ------------------------------------------------------------------------------------------------


def test_static_stages_follow_dynamic_int8_and_exclusions_follow_rejected_static(cpu):
    """Every static candidate rejected: the exclusion stage still comes, on each calibration tried."""
    search = OrtSearch(cpu, "CPUExecutionProvider")
    proposed = []
    while batch := search.ask():
        for candidate in batch:
            proposed.append(dict(candidate.config))
            rejected = candidate.config.get("precision") == "int8-static"
            search.tell(TrialOutcome(candidate, not rejected, None if rejected else 1.0 + len(proposed)))
    precisions = [c.get("precision") for c in proposed]
    assert precisions.index("int8-dynamic") < precisions.index("int8-static")
    static = [c for c in proposed if c.get("precision") == "int8-static"]
    assert {c["calibration"] for c in static if c["exclude_worst"] == 0} == {"minmax", "percentile", "entropy"}
    assert {(c["calibration"], c["exclude_worst"]) for c in static if c["exclude_worst"]} == {
        (m, n) for m in ("minmax", "percentile", "entropy") for n in (2, 5)}
    # on the best configuration: here the first (latencies grow with each proposal)
    assert all(c["intra_op_threads"] == proposed[0]["intra_op_threads"] for c in static)


def test_exclusions_vary_the_fastest_accepted_static_candidate(cpu):
    search = OrtSearch(cpu, "CPUExecutionProvider")
    exclusions = []
    while batch := search.ask():
        for candidate in batch:
            config = candidate.config
            if config.get("exclude_worst"):
                exclusions.append(dict(config))
            fast = config.get("calibration") == "percentile"
            search.tell(TrialOutcome(candidate, True, 0.5 if fast else 2.0))
    assert {(c["calibration"], c["exclude_worst"]) for c in exclusions} == {("percentile", 2), ("percentile", 5)}


# ---- ONNX Runtime QDQ ------------------------------------------------------------------------------------------


def test_calibration_samples_are_really_used(cpu, mlp_path, tmp_path):
    """A calibration set 100x wider than the inputs the model sees gives another model (its own cache entry) with
    far coarser activation scales, hence a much larger error on ordinary inputs; the synthetic one is accurate."""
    synthetic_ctx = _ctx(mlp_path, cpu, tmp_path / "synthetic")
    wide = sample_data.SampleSet("wide.py:samples", tuple(
        {name: value * 100 for name, value in sample.items()}
        for sample in sample_data.synthetic_samples(synthetic_ctx.info, 8).samples))
    saved = sample_data.save(wide, tmp_path / "calibration.npz")
    wide_ctx = replace(synthetic_ctx, workdir=tmp_path / "wide", calibration_path=saved)
    tuner, candidate = OnnxRuntimeTuner(), Candidate("onnxruntime", "cpu", STATIC)
    feeds = load_reference(ensure_reference(synthetic_ctx.info, 1, tmp_path / "data", 120, None)).feeds
    synthetic_model = tuner.build(candidate, synthetic_ctx)
    wide_model = tuner.build(candidate, wide_ctx)
    assert synthetic_model.details["calibration"] == {"origin": "synthetic", "samples": 32, "synthetic": True}
    assert wide_model.details["calibration"] == {"origin": "wide.py:samples", "samples": 8, "synthetic": False}
    synthetic_path, wide_path = (tuner.model_path(candidate, c) for c in (synthetic_ctx, wide_ctx))
    assert synthetic_path.name != wide_path.name  # keyed by the calibration digest
    synthetic_error = _error(mlp_path, synthetic_path, feeds)
    wide_error = _error(mlp_path, wide_path, feeds)
    assert synthetic_error < 0.05 and wide_error > 5 * synthetic_error, (synthetic_error, wide_error)


def test_excluding_the_worst_nodes_removes_the_concentrated_error(tmp_path):
    path = models.save(spike_mlp(), tmp_path / "spike.onnx")
    info = analyze(ModelSpec(path))
    samples = sample_data.synthetic_samples(info, 8)
    ranking = error_ranking(path, tmp_path / "work", StaticQuantization("minmax"), samples)
    assert {name for name, _ in ranking[:2]} == {"spike", "mm2"}, ranking  # the spiked tensor's producer, consumer
    errors = {}
    for exclude in (0, 2):
        quantized = quantize(path, tmp_path / "work", StaticQuantization("minmax", exclude), samples)
        errors[exclude] = _error(path, quantized.path, samples.samples[0])
        assert len(quantized.excluded_nodes) == exclude
    assert errors[0] > 0.5 and errors[2] < 0.05, errors
    ranking_file = next((tmp_path / "work").glob("*.ranking.json"))
    again = quantize(path, tmp_path / "work", StaticQuantization("minmax", 2), samples)  # cached: same nodes
    assert set(again.excluded_nodes) == {"spike", "mm2"} and ranking_file.exists()


# ---- both backends through the shared harness, and the artifact -----------------------------------------------


def test_ort_static_and_nncf_int8_are_built_checked_and_timed(cpu, cnn_path, tmp_path):
    """One isolated child, the shared harness: each int8 candidate is checked against the fp32 reference at
    --tolerance and timed; its details say what it was calibrated on. The quantised files are cached."""
    pytest.importorskip("nncf", reason="nncf is not installed (pip install 'advisor[openvino]')")
    from tuners.openvino import baseline_config

    ctx = _ctx(cnn_path, cpu, tmp_path / "work")
    data = ensure_reference(ctx.info, 1, tmp_path / "data", 120, None)
    ort_static = Candidate("onnxruntime", "cpu", STATIC)
    nncf_int8 = Candidate("openvino", "cpu", {**baseline_config(), "precision": "int8",
                                              "quantization_preset": "performance"})
    trials = run_job(MeasureJob((ort_static, nncf_int8), ctx, data, FAST), "confirm", LIMITS)
    for trial in trials:
        assert trial.status == "ok", trial.reason
        assert trial.tolerance == 0.05 and 0 < trial.max_rel_error < 0.05 and trial.latency.n >= 5
        assert trial.details["calibration"]["synthetic"] is True
    assert trials[0].details["excluded_nodes"] == []
    assert trials[1].details["inference_precision"] == "f32" and trials[1].details["model_type"] == "default"
    assert trials[1].details["int8_layers"].get("Convolution", 0) >= 2
    cached = sorted(p.name for p in ctx.workdir.iterdir() if p.suffix in (".onnx", ".xml"))
    assert any(".qdq-minmax-uint8-x0-" in name for name in cached) and any(".ov-int8-performance-" in n
                                                                          for n in cached), cached


def test_the_qdq_artifact_verifies_and_runs(cpu, cnn_path, tmp_path):
    """The artifact ships the QDQ model, and `advisor verify` passes on it (its outputs and the SLO)."""
    ctx = _ctx(cnn_path, cpu, tmp_path / "work")
    trial = Trial(id="onnxruntime-cpu-b1", backend="onnxruntime", target="cpu", config=STATIC, batch_size=1,
                  status="ok")
    artifact = build_artifact(ArtifactRequest(trial, ctx, Slo(1000.0, "p50"), expected={"instance": None}),
                              tmp_path / "artifact", timeout_s=120, log_path=None)
    shipped = onnx.load(str(artifact / "model" / "model.onnx"))
    assert any(node.op_type in ("QuantizeLinear", "QLinearConv", "DequantizeLinear") for node in shipped.graph.node)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["config"]["precision"] == "int8-static" and manifest["files"] == {
        "model/model.onnx": manifest["files"]["model/model.onnx"],
        "model/session_options.json": manifest["files"]["model/session_options.json"]}
    verified = verify(artifact, harness=FAST)  # what `advisor verify` runs, in this process
    assert verified.exit_code == 0 and verified.numerics.passed and verified.numerics.max_rel_error > 0


def test_without_nncf_openvino_runs_fp32_and_says_int8_was_not_searched(cpu, cnn_path, tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'advisor[openvino]')")
    from tuners.openvino import OpenVinoSearch, OpenVinoTuner, baseline_config

    monkeypatch.setitem(sys.modules, "nncf", None)  # what `import nncf` finds where it is not installed
    search, proposed = OpenVinoSearch(cpu), []
    while batch := search.ask():
        proposed += [c.config for c in batch]
        for candidate in batch:
            search.tell(TrialOutcome(candidate, True, 1.0))
    assert proposed and not any(c["precision"] == "int8" for c in proposed)
    built = OpenVinoTuner().build(Candidate("openvino", "cpu", baseline_config()), _ctx(cnn_path, cpu, tmp_path))
    assert built.details["int8"] == "int8 not searched: nncf is not installed (pip install 'advisor[openvino]')"
