"""The TVM backend with real TVM: import, the untuned build, a tiny MetaSchedule run, database reuse and merging,
an operator the frontend cannot convert, a crashing worker, and the exported library."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import models
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, load_reference, run_job
from advisor.measure import HarnessSettings
from advisor.model import ModelSpec, analyze
from hwprofiles.targets import detect_targets
from tuners import tvm_tuning
from tuners.base import Candidate, TrialOutcome, TuneContext

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'advisor[tvm]')")
pytestmark = pytest.mark.tvm

from tuners.tvm import TvmTuner, tuning_plan  # noqa: E402  (needs the skip above first)

FAST = HarnessSettings(warmup=1, min_iterations=5, min_time_s=0.05, max_time_s=1.0, bootstrap_resamples=200)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cpu():
    return detect_targets()[0]


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory) -> Path:
    """Small enough that a MetaSchedule round is quick, large enough that tuning visibly matters."""
    return models.save(models.tiny_cnn(32, 8), tmp_path_factory.mktemp("tvm") / "cnn.onnx")


def _ctx(path: Path, target, tmp_path: Path, budget_s: float = 40, **shapes) -> TuneContext:
    info = analyze(ModelSpec(path, shapes))
    return TuneContext(info=info, target=target, workdir=tmp_path / "work", cache_dir=tmp_path / "cache",
                       budget_s=budget_s, tolerance=0.05)


def _measure(candidates, ctx, tmp_path, phase="search", timeout_s=300):
    data = ensure_reference(ctx.info, ctx.batch_size, tmp_path / "data", 120, None)
    return run_job(MeasureJob(tuple(candidates), ctx, data, FAST), phase, ExecutionLimits(timeout_s, None, None))


def _tuned(candidate: Candidate, seconds: int, trials: int) -> Candidate:
    return Candidate("tvm", candidate.target, {**candidate.config, "tuned": True, "tuning": "meta_schedule",
                                              "tuning_s": seconds, "max_trials": trials, "batch_size": 1})


# ---- planning and the database, no TVM needed ------------------------------------------------------------------


def test_plan_puts_trials_on_the_heaviest_tasks():
    tasks = [("reshape", 0, 3, 0), ("conv_small", 1e6, 1, 0), ("conv_big", 1e8, 2, 0), ("softmax", 1e4, 1, 0),
             ("matmul", 5e7, 1, 0)]
    plans = tvm_tuning.plan_tasks(tasks, max_trials=64)
    assert [p.name for p in plans][:2] == ["conv_big", "matmul"]  # heaviest first
    trials = {p.name: p.trials for p in plans}
    assert trials["conv_big"] > trials["matmul"] >= tvm_tuning.MIN_TRIALS_PER_TASK
    assert trials["reshape"] == trials["softmax"] == 0  # under the minimum share: never worth a trial
    assert sum(trials.values()) <= 64 + tvm_tuning.MIN_TRIALS_PER_TASK


def test_plan_subtracts_trials_the_database_already_has():
    fresh = {p.name: p.trials for p in tvm_tuning.plan_tasks([("a", 1e8, 1, 0), ("b", 1e8, 1, 0)], 64)}
    known = {p.name: p for p in tvm_tuning.plan_tasks([("a", 1e8, 1, 100), ("b", 1e8, 1, 10)], 64)}
    assert known["a"].trials == 0 and known["a"].existing_trials == 100
    assert known["b"].trials == fresh["b"] - 10


def test_plan_covers_no_more_tasks_than_the_budget_allows():
    tasks = [(f"t{i}", 1e6, 1, 0) for i in range(20)]
    tuned = [p for p in tvm_tuning.plan_tasks(tasks, max_trials=48) if p.trials]
    assert len(tuned) == 48 // tvm_tuning.MIN_TRIALS_PER_TASK


def test_tuning_plan_is_deterministic_and_bounded():
    assert tuning_plan(100) == tuning_plan(100)
    assert tuning_plan(1)["tuning_s"] >= 20 and tuning_plan(1)["max_trials"] >= 8


def test_the_reserve_for_cost_model_picks_never_starves_measured_trials():
    # the sweep size held 3.9 s of 6.5 s for picks and measured nothing; a short budget gives way
    assert tvm_tuning.pick_reserve_s(15, left_s=14, unmeasured=10) == pytest.approx(14 - tvm_tuning.MIN_MEASURE_S)
    assert tvm_tuning.pick_reserve_s(6.5, left_s=5.5, unmeasured=10) == 0.0
    assert tvm_tuning.pick_reserve_s(6.5, left_s=-1.0, unmeasured=10) == 0.0
    # a full budget keeps its reserve (its share, or the time per pick)
    assert tvm_tuning.pick_reserve_s(60, 58, 4) == pytest.approx(4 * tvm_tuning.FALLBACK_S_PER_TASK)
    assert tvm_tuning.pick_reserve_s(40, 38, 50) == pytest.approx(tvm_tuning.FALLBACK_SHARE * 40)
    for seconds in (2, 6.5, 10, 26, 60, 300):
        for left in (seconds, seconds * 0.8, seconds * 0.3):
            reserve = tvm_tuning.pick_reserve_s(seconds, left, 30)
            assert left - reserve >= min(left, tvm_tuning.MIN_MEASURE_S)  # a measured round always fits


def test_the_label_says_what_the_build_applied():
    tuning = {"tasks": 6, "tasks_total": 6, "measured_trials": 8, "tasks_with_measured_records": 1,
              "predicted_picks": 4}
    measured = tvm_tuning.tuning_label(tuning, {"functions_from_database": 1, "functions_from_cost_model": 4}, 4)
    assert measured == {"tuning_status": "tuned", "measured_trials": 8, "predicted_picks": 4, "tasks_total": 6,
                        "tasks_with_measured_records": 1, "batch_size_tuned": 4}
    none_measured = {**tuning, "measured_trials": 0, "tasks_with_measured_records": 0, "predicted_picks": 6}
    predicted = tvm_tuning.tuning_label(none_measured, {"functions_from_database": 0,
                                                        "functions_from_cost_model": 6}, 4)
    assert predicted["tuning_status"] == "predicted" and predicted["measured_trials"] == 0
    sampled = tvm_tuning.tuning_label({**none_measured, "predicted_picks": 0}, {"functions_fallback": 6}, 4)
    assert sampled["tuning_status"] == "untuned" and sampled["batch_size_tuned"] is None
    assert tvm_tuning.untuned_label(6)["tuning_status"] == "untuned"


def _write_db(folder: Path, workloads: list[str], records: list[tuple[int, dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / tvm_tuning.WORKLOADS).write_text("".join(w + "\n" for w in workloads))
    (folder / tvm_tuning.RECORDS).write_text("".join(json.dumps([i, r]) + "\n" for i, r in records))


def test_merge_remaps_workloads_and_is_idempotent(tmp_path):
    shared, private = tmp_path / "shared", tmp_path / "private"
    _write_db(shared, ['["1","A"]'], [(0, {"t": "a1"})])
    tvm_tuning.private_copy(shared, private)
    # this run adds a workload B and records for A and B, and a killed run's torn last line
    with open(private / tvm_tuning.WORKLOADS, "a") as handle:
        handle.write('["2","B"]\n')
    with open(private / tvm_tuning.RECORDS, "a") as handle:
        handle.write(json.dumps([1, {"t": "b1"}]) + "\n" + json.dumps([0, {"t": "a2"}]) + "\n" + '[1, {"t": "b')
    # meanwhile another run merged workload C first, so B must get index 2 in the shared file
    with open(shared / tvm_tuning.WORKLOADS, "a") as handle:
        handle.write('["3","C"]\n')
    assert tvm_tuning.merge_records(private, shared) == 2
    assert tvm_tuning.merge_records(private, shared) == 0
    workloads = (shared / tvm_tuning.WORKLOADS).read_text().splitlines()
    records = [json.loads(line) for line in (shared / tvm_tuning.RECORDS).read_text().splitlines()]
    assert workloads == ['["1","A"]', '["3","C"]', '["2","B"]']
    assert [(workloads[i], r["t"]) for i, r in records] == [('["1","A"]', "a1"), ('["2","B"]', "b1"),
                                                            ('["1","A"]', "a2")]


def _merge_many(shared: str, private: str, tag: str) -> None:
    folder = Path(private)
    tvm_tuning.private_copy(Path(shared), folder)
    with open(folder / tvm_tuning.WORKLOADS, "a") as handle:
        handle.write(f'["{tag}","W{tag}"]\n')
    count = len((folder / tvm_tuning.WORKLOADS).read_text().splitlines()) - 1
    with open(folder / tvm_tuning.RECORDS, "a") as handle:
        for i in range(50):
            handle.write(json.dumps([count, {"t": f"{tag}{i}"}]) + "\n")
    tvm_tuning.merge_records(folder, Path(shared))


def test_concurrent_runs_merge_into_the_shared_database_safely(tmp_path):
    shared = tmp_path / "shared"
    _write_db(shared, [], [])
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_merge_many, args=(str(shared), str(tmp_path / f"p{i}"), str(i)))
               for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    workloads = (shared / tvm_tuning.WORKLOADS).read_text().splitlines()
    records = [json.loads(line) for line in (shared / tvm_tuning.RECORDS).read_text().splitlines()]
    assert sorted(workloads) == [f'["{i}","W{i}"]' for i in range(4)]
    assert len(records) == 200
    for index, record in records:  # every record points at its own workload
        assert workloads[index] == f'["{record["t"][0]}","W{record["t"][0]}"]'


# ---- real TVM ---------------------------------------------------------------------------------------------------


def test_available_on_cpu_with_a_target_for_this_cpu(cpu, small_cnn, tmp_path):
    assert TvmTuner().availability(cpu).available
    search = TvmTuner().search(_ctx(small_cnn, cpu, tmp_path))
    untuned = search.ask()
    assert [c.config["tuned"] for c in untuned] == [False]
    assert untuned[0].config["target"].startswith("llvm")
    if cpu.cpu.microarchitecture != "generic":
        assert f"mcpu={cpu.cpu.microarchitecture}" in untuned[0].config["target"]
    search.tell(TrialOutcome(untuned[0], True, 10.0))
    tuned = search.ask()
    assert [c.config["tuned"] for c in tuned] == [True] and tuned[0].config["tuning"] == "meta_schedule"
    assert search.ask() == []


def test_untuned_build_matches_the_reference(cpu, encoder_path, tmp_path):
    """The transformer encoder has symbolic batch and sequence axes: the import must make them static first."""
    ctx = _ctx(encoder_path, cpu, tmp_path, input_ids=(1, 16), attention_mask=(1, 16))
    candidate = TvmTuner().search(ctx).ask()[0]
    [trial] = _measure([candidate], ctx, tmp_path)
    assert trial.status == "ok", trial.reason
    assert trial.max_rel_error < 1e-3 and trial.latency.n >= 5
    assert trial.details["tuned"] is False
    assert trial.details["tuning_status"] == "untuned" and trial.details["tasks_total"] >= 1
    assert trial.details["measured_trials"] == trial.details["predicted_picks"] == 0
    assert trial.details["tasks_with_measured_records"] == 0 and trial.details["batch_size_tuned"] is None


def test_tiny_tuning_run_then_reuse_from_the_database(cpu, small_cnn, tmp_path):
    ctx = _ctx(small_cnn, cpu, tmp_path / "run1")
    untuned = TvmTuner().search(ctx).ask()[0]
    tuned = _tuned(untuned, seconds=60, trials=16)  # time enough for the plan (two rounds) on a loaded machine
    first, base = _measure([tuned, untuned], ctx, tmp_path / "run1")
    assert first.status == "ok" and base.status == "ok", (first.reason, base.reason)
    details = first.details
    assert details["stopped_by"] == "plan", details
    assert details["tuned"] and details["trials_used"] > 0 and details["records_added"] == details["trials_used"]
    assert details["tasks_tuned"] >= 1 and details["functions_from_database"] >= 1
    assert details["progress"] and details["progress"][-1][1] == details["trials_used"]
    assert first.latency.p50 < base.latency.p50, "a tuned build must beat the untuned one it is timed against"
    assert details["tuning_status"] == "tuned" and details["batch_size_tuned"] == 1
    assert 1 <= details["measured_trials"] <= details["trials_used"]  # failed candidates are not counted
    assert 1 <= details["tasks_with_measured_records"] <= details["tasks_total"] == details["tasks"]
    assert details["tasks_with_measured_records"] + details["predicted_picks"] <= details["tasks_total"]
    assert details["functions_unscheduled"] == 0  # no function left with the default pipeline's naive loops
    assert base.details["tuning_status"] == "untuned" and base.details["tasks_total"] == details["tasks_total"]
    shared = Path(details["database"])
    assert shared.is_relative_to(ctx.cache_dir) and (shared / tvm_tuning.RECORDS).stat().st_size > 0

    # a second run in another folder finds every planned task in the shared database: nothing left to tune
    ctx2 = replace(ctx, workdir=tmp_path / "run2" / "work")
    [second] = _measure([tuned], ctx2, tmp_path / "run2")
    assert second.status == "ok", second.reason
    assert second.details["trials_used"] == 0 and second.details["stopped_by"] == "nothing to tune"
    assert second.details["tasks_reused"] >= 1 and second.details["functions_from_database"] >= 1
    assert second.details["warm_start_records"] >= details["trials_used"] // 2  # the cost model learned from them
    assert second.details["tuning_time_s"] < details["tuning_time_s"] / 2
    # tuned all the same, by the records of the earlier run
    assert second.details["tuning_status"] == "tuned"
    assert second.details["measured_trials"] == details["measured_trials"]

    # the head-to-head of the same run rebuilds from its records, never tuning again
    [again] = _measure([tuned], ctx2, tmp_path / "run2", phase="confirm")
    assert again.status == "ok" and again.details["tuning_time_s"] == second.details["tuning_time_s"]
    assert again.details["tuned_in"] == "an earlier trial" and "progress" not in again.details

    # the exported library loads and runs with the TVM runtime alone, and agrees with the reference
    dest = tmp_path / "export"
    files = _export_in_child(tuned, ctx2, dest)
    assert (dest / "model.so").exists() and files["runtime"]["tvm"]["tuned"] is True
    reference = load_reference(ensure_reference(ctx2.info, 1, tmp_path / "run2" / "data", 60, None))
    np.savez(tmp_path / "feeds.npz", **reference.feeds)
    script = ("import json, sys, numpy as np; from tuners.tvm import TvmTuner; "
              "predict = TvmTuner().load_exported(__import__('pathlib').Path(sys.argv[1]), json.loads(sys.argv[2])); "
              "feeds = dict(np.load(sys.argv[3])); out = predict(feeds); np.save(sys.argv[4], out[0])")
    subprocess.run([sys.executable, "-c", script, str(dest), json.dumps(files["runtime"]), str(tmp_path / "feeds.npz"),
                    str(tmp_path / "out.npy")], check=True, cwd=REPO, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), reference.outputs[0], rtol=1e-3, atol=1e-4)

    # `advisor cache` lists the database and clears it
    from click.testing import CliRunner

    from advisor.cli.main import cli

    listed = CliRunner().invoke(cli, ["cache", "list", "--cache-dir", str(ctx.cache_dir)], catch_exceptions=False)
    assert listed.exit_code == 0 and str(shared) in listed.output and listed.output.split()[2] == "tvm"
    cleared = CliRunner().invoke(cli, ["cache", "clear", "--cache-dir", str(ctx.cache_dir), "--backend", "tvm",
                                       "--yes"], catch_exceptions=False)
    assert cleared.exit_code == 0 and not shared.exists()


def test_a_budget_too_small_to_measure_is_not_labelled_tuned(cpu, small_cnn, tmp_path):
    """A sweep batch size whose share of the tuning time is gone before the first round: the config still says
    `tuned: true` (it names the candidate), the label says nothing was tuned."""
    ctx = replace(_ctx(small_cnn, cpu, tmp_path), batch_size=2)
    untuned = TvmTuner().search(ctx).ask()[0]
    [trial] = _measure([_tuned(untuned, seconds=0, trials=16)], ctx, tmp_path)
    assert trial.status == "ok", trial.reason
    details = trial.details
    assert details["tuning_budget_s"] == 0 and details["trials_used"] == 0
    assert details["stopped_by"] == tvm_tuning.NO_TIME_TO_MEASURE
    assert details["tuning_status"] == "untuned" and details["measured_trials"] == 0
    assert details["tasks_with_measured_records"] == 0 and details["batch_size_tuned"] is None
    assert details["functions_fallback"] >= 1 and details["functions_unscheduled"] == 0


def test_a_sweep_batch_size_too_short_to_measure_is_labelled_predicted(cpu, small_cnn, tmp_path):
    """The issue's sweep: a quarter of a 26 s tuning time at another batch size, 6.5 s, less than starting the
    runner and measuring one round takes. It measures nothing, so it spends the time on cost-model picks (not on
    a runner) and says so."""
    ctx = replace(_ctx(small_cnn, cpu, tmp_path), batch_size=2)
    untuned = TvmTuner().search(ctx).ask()[0]
    [trial] = _measure([_tuned(untuned, seconds=26, trials=52)], ctx, tmp_path)
    assert trial.status == "ok", trial.reason
    details = trial.details
    assert details["tuning_budget_s"] == 6.5 < tvm_tuning.MIN_MEASURE_S
    assert details["stopped_by"] == tvm_tuning.NO_TIME_TO_MEASURE and details["trials_used"] == 0
    assert details["tuning_status"] == "predicted" and details["batch_size_tuned"] == 2
    assert details["measured_trials"] == details["tasks_with_measured_records"] == 0
    assert details["predicted_picks"] >= 1 and details["functions_from_cost_model"] >= 1
    assert details["tuning_time_s"] < 6.5 + 5  # the picks stop at the deadline (one pick may run past it)


def _failing_runner():
    """A MetaSchedule runner whose every measurement fails (a broken device): records with no run time."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    @derived_object
    class Failed(PyRunnerFuture):
        def done(self):
            return True

        def result(self):
            return RunnerResult(None, "the device is gone")

    @derived_object
    class FailingRunner(PyRunner):
        def run(self, runner_inputs):
            return [Failed() for _ in runner_inputs]

    return FailingRunner()


def test_failed_measurements_leave_a_predicted_build(cpu, small_cnn, tmp_path):
    """Trials run but none measured: every schedule the build applies is a cost-model pick, labelled so."""
    from tuners import tvm_compile as tc

    ctx = _ctx(small_cnn, cpu, tmp_path)
    spec = tc.target_spec(cpu)
    tvm_tuning.register_cpu_intrinsics_only(cpu.cpu.arch)
    mod = tc.import_onnx(tc.static_model_path(small_cnn, ctx.info.shapes_at(1), ctx.workdir), ctx.info.shapes_at(1))
    target, folder = tc.make_target(spec), tmp_path / "db"
    tvm_tuning.private_copy(tmp_path / "shared", folder)
    outcome = tvm_tuning.tune(tc.fused_module(mod, target), target, folder, max_trials=8, seconds=20,
                              threads=tc.threads_for(cpu), runner=_failing_runner())
    tuning = outcome.details()
    assert tuning["trials_used"] >= 1 and tuning["measured_trials"] == 0
    assert tuning["tasks_with_measured_records"] == 0 and tuning["predicted_picks"] >= 1
    databases = (tvm_tuning.open_database(folder), tvm_tuning.open_database(folder / tvm_tuning.FALLBACK))
    _, facts = tc.build_with_database(mod, target, databases, tc.threads_for(cpu))
    label = tvm_tuning.tuning_label(tuning, facts, 1)
    assert facts["functions_from_database"] == 0 and facts["functions_from_cost_model"] >= 1
    assert label["tuning_status"] == "predicted" and label["batch_size_tuned"] == 1


def _export_in_child(candidate, ctx, dest) -> dict:
    from advisor.isolation import run_isolated

    result = run_isolated(_export, (candidate, ctx, dest), timeout_s=300)
    assert result.ok, result.reason
    return result.value


def _export(candidate, ctx, dest) -> dict:
    exported = TvmTuner().export(candidate, ctx, dest)
    return {"files": [str(f) for f in exported.files], "runtime": exported.runtime,
            "requirements": list(exported.requirements)}


def test_unsupported_operator_fails_the_candidate_with_its_name(cpu, tmp_path):
    """Celu runs in ONNX Runtime (so the reference exists) but the Relax frontend has no converter for it."""
    node = helper.make_node("Celu", ["x"], ["y"], alpha=0.5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    ctx = _ctx(path, cpu, tmp_path)
    [trial] = _measure(TvmTuner().search(ctx).ask(), ctx, tmp_path)
    assert trial.status == "failed"
    assert "cannot convert" in trial.reason and "Celu" in trial.reason


def test_a_crashing_tvm_worker_is_a_failed_trial(cpu, small_cnn, tmp_path):
    """TVM code that segfaults inside the worker (a plugin backend built on the TVM one) fails only its trial."""
    env = {**os.environ, "ADVISOR_TUNERS": "crashtvm=faulty_tuners:CrashingTvmTuner",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", "from advisor.cli import main; main()", "recommend",
                             str(small_cnn), "--slo", "1s",
                             "--backends", "onnxruntime,crashtvm", "--budget", "120s", "--min-time", "0.05s",
                             "--batch-sizes", "1", "--no-artifact", "-q", "--out", str(out)],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    crashed = [t for t in report["trials"] if t["backend"] == "crashtvm"]
    assert crashed and all(t["status"] == "failed" for t in crashed)
    assert "SIGSEGV" in crashed[0]["reason"]
    assert any(t["backend"] == "onnxruntime" and t["status"] == "ok" for t in report["trials"])


def test_a_cuda_target_without_a_cuda_runtime_is_unavailable_with_the_reason(cpu):
    """On a machine without an NVIDIA driver (or a TVM built without CUDA) the GPU target is reported, not tried."""
    import tvm

    from hwprofiles.targets import GpuInfo, Target
    from tuners import tvm_compile

    gpu = GpuInfo(index=0, name="NVIDIA A10G", memory_gib=22.0, compute_capability="8.6", driver_version="535.104.05",
                  cuda_version="12.2", catalog_type="A10G")
    target = Target("cuda:0", "cuda", cpu.cpu, gpu)
    assert tvm_compile.target_spec(target) == {"kind": "cuda", "arch": "sm_86"}
    availability = TvmTuner().availability(target)
    if tvm.runtime.enabled("cuda") and tvm.cuda(0).exist:
        assert availability.available
    else:
        assert not availability.available and "CUDA" in availability.reason
