"""The ONNX Runtime backend against real sessions."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, fp32_tolerance, load_reference, run_job
from advisor.measure import HarnessSettings
from advisor.model import ModelSpec, analyze
from hwprofiles.targets import detect_targets
from tuners.base import Candidate, TrialOutcome, TuneContext
from tuners.onnxruntime import GRAPH_LEVELS, OnnxRuntimeTuner, stock_config

FAST = HarnessSettings(warmup=1, min_iterations=5, min_time_s=0.05, max_time_s=1.0, bootstrap_resamples=200)


@pytest.fixture(scope="module")
def cpu():
    return detect_targets()[0]


def _ctx(path: Path, target, tmp_path: Path, **shapes) -> TuneContext:
    info = analyze(ModelSpec(path, shapes))
    return TuneContext(info=info, target=target, workdir=tmp_path / "work", cache_dir=tmp_path / "cache",
                       budget_s=30, tolerance=0.05)


def test_available_on_cpu(cpu):
    assert OnnxRuntimeTuner().availability(cpu).available


def test_search_starts_with_stock_and_varies_the_best(cpu, cnn_path, tmp_path):
    search = OnnxRuntimeTuner().search(_ctx(cnn_path, cpu, tmp_path))
    first = search.ask()
    assert [c.config for c in first] == [stock_config()]
    search.tell(TrialOutcome(first[0], True, 5.0))
    threads = search.ask()
    assert {c.config["intra_op_threads"] for c in threads} >= {1}
    fastest = threads[0]
    for candidate in threads:
        search.tell(TrialOutcome(candidate, True, 1.0 if candidate is fastest else 9.0))
    spinning = search.ask()
    assert spinning and all(c.config["intra_op_threads"] == fastest.config["intra_op_threads"] for c in spinning)
    seen = {c.key for c in first + threads + spinning}
    proposed = [c.config for c in first + threads + spinning]
    while batch := search.ask():
        assert not seen & {c.key for c in batch}, "a configuration was proposed twice"
        seen |= {c.key for c in batch}
        proposed += [c.config for c in batch]
        for candidate in batch:
            search.tell(TrialOutcome(candidate, False, None))
    # the search ran every stage and then stopped: graph levels, parallel execution and int8 were all proposed
    assert {c.get("graph_optimization") for c in proposed} == set(GRAPH_LEVELS) | {"all"}
    assert any(c.get("execution_mode") == "parallel" for c in proposed)
    assert any(c.get("precision") == "int8-dynamic" for c in proposed)


def test_failed_baseline_ends_search(cpu, cnn_path, tmp_path):
    search = OnnxRuntimeTuner().search(_ctx(cnn_path, cpu, tmp_path))
    (baseline,) = search.ask()
    search.tell(TrialOutcome(baseline, False, None))
    assert search.ask() == []


def test_measure_stock_and_int8_against_reference(cpu, encoder_path, tmp_path):
    ctx = _ctx(encoder_path, cpu, tmp_path, input_ids=(1, 16), attention_mask=(1, 16))
    data = ensure_reference(ctx.info, 1, tmp_path / "data", 120, None)
    stock = Candidate("onnxruntime", "cpu", stock_config())
    int8 = Candidate("onnxruntime", "cpu", {**stock_config(), "stock": False, "precision": "int8-dynamic"})
    strict = replace(ctx, tolerance=1e-9)
    limits = ExecutionLimits(timeout_s=120, memory_limit_mib=None, log_path=None)
    trials = run_job(MeasureJob((stock, int8), strict, data, FAST, profile=True), "confirm", limits)
    assert trials[0].status == "ok" and trials[0].latency.n >= 5
    assert trials[0].max_rel_error < 1e-3
    assert trials[0].details["op_class_ms"]["matmul"] > 0
    # a reduced precision is held to --tolerance, never tighter than the model's calibrated fp32 tolerance
    assert trials[1].status == "rejected", trials[1].reason
    assert trials[1].tolerance == pytest.approx(fp32_tolerance(trials[1].fp32_noise_floor))
    assert trials[1].max_rel_error > trials[1].tolerance and f"tolerance {trials[1].tolerance:.3g}" in trials[1].reason
    assert (ctx.workdir / "encoder.int8-dynamic.onnx").exists()


def test_export_and_load(cpu, cnn_path, tmp_path):
    tuner = OnnxRuntimeTuner()
    ctx = _ctx(cnn_path, cpu, tmp_path)
    config = {**stock_config(), "stock": False, "intra_op_threads": 1}
    exported = tuner.export(Candidate("onnxruntime", "cpu", config), ctx, tmp_path / "artifact")
    assert {p.name for p in exported.files} == {"model.onnx", "session_options.json"}
    run = tuner.load_exported(tmp_path / "artifact", exported.runtime)
    ref = load_reference(ensure_reference(ctx.info, 1, tmp_path / "data", 120, None))
    feeds, reference = ref.feeds, ref.outputs
    np.testing.assert_allclose(run(feeds)[0], reference[0], rtol=1e-4, atol=1e-5)
