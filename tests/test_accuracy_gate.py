"""--calibration-data / --eval-data: the user's samples loaded and checked against the model, and reduced-precision
candidates judged by a metric on them (advisor.sample_data, advisor.accuracy, advisor.executor)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from advisor.accuracy import COSINE, TOP1, AccuracyGate, default_metric_name, mean_cosine_similarity, prepare_gate, \
    top1_accuracy
from advisor.errors import UserError
from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, reference_outputs, run_job
from advisor.measure import HarnessSettings
from advisor.model import ModelSpec, analyze
from advisor.sample_data import load, load_calibration_data, load_eval_data, save, synthetic_samples
from advisor.variants import precision_variants
from cli_helpers import invoke, one_line_error
from reports.markdown import _variant_lines, md
from hwprofiles.targets import detect_targets
from tuners.base import Candidate, TuneContext
from tuners.onnxruntime import stock_config

FAST = HarnessSettings(warmup=1, min_iterations=5, min_time_s=0.05, max_time_s=0.5, bootstrap_resamples=200)


@pytest.fixture(scope="module")
def mlp_info(mlp_path):
    return analyze(ModelSpec(mlp_path))


def _eval_folder(folder: Path, mlp_path: Path, count: int = 12) -> Path:
    """Samples of the tiny MLP with the fp32 reference's outputs as the expected results."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for index in range(count):
        x = rng.standard_normal((1, 64)).astype(np.float32)
        expected = reference_outputs(mlp_path, {"x": x})[0]
        np.savez(folder / f"{index:03d}.npz", x=x[0], expected=expected[0])  # without the batch axis: accepted
    return folder


def _metrics_file(folder: Path) -> Path:
    """A user's metric module: the negated largest absolute error to the expected outputs (0 is exact)."""
    path = folder / "metrics.py"
    path.write_text(textwrap.dedent("""
        import numpy as np

        def neg_max_error(outputs, expected):
            return -float(np.max(np.abs(outputs[0] - expected[0])))

        def broken(outputs, expected):
            raise KeyError("no such column")
    """))
    return path


# ---- loading ------------------------------------------------------------------------------------------------------

def test_folder_of_npz_and_npy_with_or_without_batch_axis(mlp_info, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    np.savez(folder / "a.npz", x=np.ones((1, 64), np.float32))
    np.save(folder / "b.npy", np.full((64,), 2.0))  # float64 without the batch axis: cast and given one
    data = load_calibration_data(str(folder), mlp_info)
    assert len(data) == 2 and not data.synthetic
    assert [s["x"].shape for s in data.samples] == [(1, 64), (1, 64)]
    assert data.samples[1]["x"].dtype == np.float32 and float(data.samples[1]["x"][0, 0]) == 2.0
    again = load(save(data, tmp_path / "saved.npz"))
    assert again.origin == data.origin and again.digest() == data.digest()
    batches = data.batches(4)  # one batch of 4, padded with the last sample, two real rows
    assert len(batches) == 1 and batches[0][0]["x"].shape == (4, 64) and batches[0][1] == 2


def test_callable_samples_and_synthetic_fallback(mlp_info, tmp_path, monkeypatch):
    (tmp_path / "user_samples.py").write_text(textwrap.dedent("""
        import numpy as np
        def calibration():
            for i in range(3):
                yield {"x": np.full((1, 64), float(i), np.float32)}
        def evaluation():
            return [({"x": np.zeros((64,), np.float32)}, np.int64(3))]
    """))
    monkeypatch.chdir(tmp_path)
    calibration = load_calibration_data("user_samples:calibration", mlp_info)
    assert [float(s["x"][0, 0]) for s in calibration.samples] == [0.0, 1.0, 2.0]
    evaluation = load_eval_data("user_samples.py:evaluation", mlp_info)
    assert len(evaluation) == 1 and evaluation.stacked_expected()[0].tolist() == [3]
    synthetic = synthetic_samples(mlp_info, 4)
    assert synthetic.synthetic and len({s["x"].tobytes() for s in synthetic.samples}) == 4


@pytest.mark.parametrize("make, message", [
    (lambda f: None, "no samples"),
    (lambda f: np.savez(f / "a.npz", y=np.ones((1, 64), np.float32)), "do not match the model's ['x']"),
    (lambda f: np.savez(f / "a.npz", x=np.ones((1, 32), np.float32)), "has shape [1, 32], the model takes [1, 64]"),
    (lambda f: np.savez(f / "a.npz", x=np.ones((1, 64), np.complex64)), "is complex64, the model takes float32"),
    (lambda f: (f / "a.npz").write_bytes(b"not a zip"), "not a readable numpy file"),
])
def test_bad_calibration_data_is_one_line(mlp_info, tmp_path, make, message):
    folder = tmp_path / "calib"
    folder.mkdir()
    make(folder)
    with pytest.raises(UserError, match=None) as error:
        load_calibration_data(str(folder), mlp_info)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_eval_sample_needs_its_expected_result(mlp_info, tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    np.savez(folder / "a.npz", x=np.ones((1, 64), np.float32))
    with pytest.raises(UserError, match="no expected result"):
        load_eval_data(str(folder), mlp_info)
    with pytest.raises(UserError, match="no such folder, and not module:function"):
        load_eval_data(str(tmp_path / "missing"), mlp_info)


# ---- metrics ------------------------------------------------------------------------------------------------------

def test_default_metrics():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_accuracy([scores], [np.array([1, 0, 0])]) == pytest.approx(2 / 3)
    assert default_metric_name((np.int64(1),)) == TOP1
    assert default_metric_name((np.zeros(8, np.float32),)) == COSINE
    out = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert mean_cosine_similarity([out], [np.array([[2.0, 0.0], [0.0, -1.0]])]) == pytest.approx(0.0)
    assert mean_cosine_similarity([out], [out * 3]) == pytest.approx(1.0)


# ---- the gate in the harness --------------------------------------------------------------------------------------

def _run(info, tmp_path, gate: AccuracyGate):
    target = detect_targets()[0]
    ctx = TuneContext(info=info, target=target, workdir=tmp_path / "work", cache_dir=tmp_path / "cache",
                      budget_s=30, tolerance=1e-9)  # an output tolerance int8 cannot meet: only the gate decides
    data = ensure_reference(info, 1, tmp_path / "data", 60, tmp_path / "workers.log")
    candidates = (Candidate("onnxruntime", target.id, stock_config()),
                  Candidate("onnxruntime", target.id, {**stock_config(), "stock": False, "precision": "int8-dynamic"}))
    return run_job(MeasureJob(candidates, ctx, data, FAST, accuracy=gate), "search",
                   ExecutionLimits(120, None, tmp_path / "w.log"))


def test_eval_metric_decides_reduced_precision(mlp_path, mlp_info, tmp_path):
    eval_set = load_eval_data(str(_eval_folder(tmp_path / "eval", mlp_path)), mlp_info)
    eval_path = save(eval_set, tmp_path / "eval.npz")
    metric = f"{_metrics_file(tmp_path)}:neg_max_error"
    strict = prepare_gate(mlp_path, eval_path, metric, 1e-6, 60, tmp_path / "ref.log")
    assert strict.reference_value == pytest.approx(0.0, abs=1e-6)  # the expected outputs are the reference's
    stock, int8 = _run(mlp_info, tmp_path, strict)
    assert stock.ok and stock.details["accuracy"]["passed"]
    assert int8.status == "rejected" and "accuracy on --eval-data" in int8.reason
    drop = int8.details["accuracy"]["drop"]
    assert drop > 1e-6 and int8.max_rel_error > 1e-9  # it would also have failed the output tolerance

    lenient = AccuracyGate(eval_path, metric, drop * 2, strict.reference_value, strict.metric_name)
    stock, int8 = _run(mlp_info, tmp_path, lenient)
    assert int8.ok, int8.reason  # accepted on the user's metric although its outputs exceed --tolerance
    assert int8.details["accuracy"]["drop"] == pytest.approx(drop, rel=1e-6)

    # the report's view of these two: the variant beside stock, its ratio and its accuracy
    report = {"precision_variants": precision_variants([stock, int8], {"eval_data": str(tmp_path / "eval"),
                                                                       "max_accuracy_drop": drop * 2})}
    rows = report["precision_variants"]["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "int8-dynamic"] and rows[0]["vs_stock"] == 1.0
    assert rows[1]["vs_stock"] == pytest.approx(int8.latency.p50 / stock.latency.p50)
    assert report["precision_variants"]["calibration_data"] == "synthetic"
    markdown = "\n".join(_variant_lines(report))
    assert "synthetic inputs" in markdown and "int8-dynamic" in markdown and md(metric) in markdown


def test_metric_that_fails_on_the_reference_is_one_line(mlp_path, mlp_info, tmp_path):
    eval_path = save(load_eval_data(str(_eval_folder(tmp_path / "eval", mlp_path, 2)), mlp_info),
                     tmp_path / "eval.npz")
    with pytest.raises(UserError, match="evaluating the fp32 reference failed.*KeyError") as error:
        prepare_gate(mlp_path, eval_path, f"{_metrics_file(tmp_path)}:broken", 0.01, 60, None)
    assert "\n" not in str(error.value)


# ---- the CLI ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--eval-metric", "m:f"], "need --eval-data"),
    (["--max-accuracy-drop", "0.1"], "need --eval-data"),
    (["--eval-data", "EVAL", "--max-accuracy-drop", "-1"], "must be zero or positive"),
    (["--eval-data", "EVAL", "--eval-metric", "nosuchmodule_xyz:f"], "no module named 'nosuchmodule_xyz'"),
    (["--calibration-data", "MISSING"], "--calibration-data"),
])
def test_cli_bad_accuracy_options(mlp_path, tmp_path, args, message):
    folder = _eval_folder(tmp_path / "eval", mlp_path, 2)
    args = [str(folder) if a == "EVAL" else str(tmp_path / "missing") if a == "MISSING" else a for a in args]
    result = invoke("recommend", mlp_path, "--slo", "50ms", "--out", tmp_path / "run", "-q", *args)
    assert result.exit_code == 2
    assert message in one_line_error(result)
    assert not (tmp_path / "run" / "trials.jsonl").exists()


def test_cli_run_judges_every_candidate_on_the_eval_data(mlp_path, tmp_path):
    """The options reach the harness: each candidate of the search was evaluated against the reference's metric."""
    folder = _eval_folder(tmp_path / "eval", mlp_path)
    out = tmp_path / "run"
    result = invoke("recommend", mlp_path, "--slo", "50ms", "--backends", "onnxruntime", "--budget", "12s",
                    "--batch-sizes", "1", "--min-time", "0.05s", "--no-artifact", "-q", "--out", out,
                    "--eval-data", folder, "--max-accuracy-drop", "0.5")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["eval_data"] == str(folder) and report["settings"]["max_accuracy_drop"] == 0.5
    search = [t for t in report["trials"] if t["phase"] == "search" and t["status"] != "failed"]
    assert search and all(t["details"]["accuracy"]["metric"] == COSINE for t in search)
    assert all(t["details"]["accuracy"]["reference"] == pytest.approx(1.0, abs=1e-5) for t in search)
    # a resume with other eval data is refused: the trials were judged on these samples
    np.savez(folder / "zzz.npz", x=np.ones(64, np.float32), expected=np.ones(8, np.float32))
    again = invoke("recommend", mlp_path, "--slo", "50ms", "--backends", "onnxruntime", "--out", out, "--resume",
                   "-q", "--eval-data", folder, "--max-accuracy-drop", "0.5")
    assert again.exit_code == 2 and "advisor: error:" in again.output
