"""Building and measuring candidates in isolated child processes, and turning what happened into Trials.

The child builds each candidate with its tuner, checks its outputs against the ONNX Runtime fp32 reference and
times it with the shared harness. Several candidates given together are timed in alternating rounds in that one
child, one at a time (the head-to-head `confirm` phase), so they are compared under the same conditions, and
each challenger's difference to the baseline is computed round by round.

The numerical check is calibrated on the model: the reference is ONNX Runtime with graph optimisations off, and
two other legitimate fp32 executions (the stock optimised session, and the same with one thread) measure how far
fp32 results of this model may drift from it by fusion and reordering alone (the noise floor). fp32 candidates
are judged against FLOOR_FACTOR times that floor (at least FP32_TOLERANCE), reduced precision against --tolerance
or that, whichever is larger; the stock configuration is never rejected (it is what the user runs today).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from advisor.accuracy import AccuracyGate
from advisor.feeds import make_feeds
from advisor.isolation import run_isolated
from advisor.measure import (HarnessSettings, LatencyStats, compare_outputs, interleaved_rounds, paired_difference,
                             time_calls)
from advisor.model import ModelInfo
from advisor.trials import Trial
from tuners.base import Candidate, TuneContext

FP32_TOLERANCE = 1e-3  # fp32 candidates differ from the reference only by operator fusion and reordering
FLOOR_FACTOR = 4.0  # another legitimate fp32 execution may drift a few times further than the two we measured


@dataclass(frozen=True)
class MeasureJob:
    candidates: tuple[Candidate, ...]
    ctx: TuneContext
    data_path: Path  # feeds and reference outputs for ctx.batch_size
    harness: HarnessSettings
    profile: bool = False  # also record time per operator class (for the cost model and the report)
    baseline: int | None = None  # head-to-head: index of the candidate every other one is compared with
    percentile: str = "p99"  # the percentile a head-to-head compares
    hopeless_ms: float | None = None  # stop timing a candidate whose median is above this (harness.time_calls)
    contexts: tuple[TuneContext, ...] = ()  # one per candidate when they differ (backends of a head-to-head)
    accuracy: AccuracyGate | None = None  # --eval-data: evaluate each candidate on it; gates reduced precision

    def context(self, index: int) -> TuneContext:
        return self.contexts[index] if self.contexts else self.ctx


def reference_data_path(data_dir: Path, batch_size: int) -> Path:
    return data_dir / f"reference-b{batch_size}.npz"


def reference_session(model_path: Path, level: str = "disabled", threads: int = 0):
    """The fp32 reference every candidate is checked against: ONNX Runtime on the CPU, graph optimisations off.
    `level` and `threads` give the other legitimate fp32 executions the noise floor is measured with."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def reference_outputs(model_path: Path, feeds, level: str = "disabled", threads: int = 0) -> list:
    return reference_session(model_path, level, threads).run(None, dict(feeds))


def fp32_noise_floor(model_path: Path, feeds, reference: list) -> float:
    """The largest relative difference between the reference and two other legitimate fp32 executions."""
    floor = 0.0
    for level, threads in (("all", 0), ("all", 1)):
        check = compare_outputs(reference_outputs(model_path, feeds, level, threads), reference, float("inf"))
        floor = max(floor, check.max_rel_error)
    return floor


def fp32_tolerance(noise_floor: float) -> float:
    return max(FP32_TOLERANCE, FLOOR_FACTOR * noise_floor)


def _compute_reference(info: ModelInfo, batch_size: int, path: Path) -> None:
    feeds = make_feeds(info, batch_size)
    outputs = reference_outputs(info.path, feeds)
    arrays = {f"in:{name}": value for name, value in feeds.items()}
    arrays.update({f"out:{i}": np.asarray(value) for i, value in enumerate(outputs)})
    arrays["meta:noise_floor"] = np.asarray(fp32_noise_floor(info.path, feeds, outputs))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)


def ensure_reference(info: ModelInfo, batch_size: int, data_dir: Path, timeout_s: float, log_path: Path) -> Path:
    """Feeds and fp32 reference outputs for one batch size, computed once per run folder (isolated)."""
    path = reference_data_path(data_dir, batch_size)
    if not path.exists():
        result = run_isolated(_compute_reference, (info, batch_size, path), timeout_s=timeout_s, log_path=log_path)
        if not result.ok:
            raise RuntimeError(f"the ONNX Runtime reference run failed at batch size {batch_size}: {result.reason}")
    return path


@dataclass(frozen=True)
class Reference:
    feeds: dict[str, np.ndarray]
    outputs: list[np.ndarray]
    noise_floor: float  # max relative difference of other legitimate fp32 executions from `outputs`

    def tolerance(self, candidate: Candidate, ctx: TuneContext) -> float:
        fp32 = fp32_tolerance(self.noise_floor)
        return fp32 if candidate.config.get("precision", "fp32") == "fp32" else max(ctx.tolerance, fp32)


def load_reference(path: Path) -> Reference:
    with np.load(path) as data:
        feeds = {key[3:]: data[key] for key in data.files if key.startswith("in:")}
        outputs = [data[f"out:{i}"] for i in range(sum(1 for k in data.files if k.startswith("out:")))]
        floor = float(data["meta:noise_floor"]) if "meta:noise_floor" in data.files else 0.0
    return Reference(feeds, outputs, floor)


def measure_in_child(job: MeasureJob) -> list[dict]:
    """Child-process entry: build, check and time each candidate; returns one plain dict per candidate."""
    from tuners.registry import load_tuner

    reference = load_reference(job.data_path)
    results: list[dict] = []
    runnable = {}
    for index, candidate in enumerate(job.candidates):
        tuner = load_tuner(candidate.backend)
        ctx = job.context(index)
        started = time.perf_counter()
        try:
            model = tuner.build(candidate, ctx)
            model.bind(reference.feeds)
            model.execute()
            check = compare_outputs(model.outputs(), reference.outputs, reference.tolerance(candidate, ctx))
            accuracy = None
            if job.accuracy is not None:
                accuracy = job.accuracy.judge(job.accuracy.evaluate(_feeds_to_outputs(model), ctx.batch_size))
                model.bind(reference.feeds)  # the timing runs on the reference feeds
        except Exception as error:  # a build error is a failed trial, not a failed run
            message = f"{type(error).__name__}: {error}".strip().splitlines()[0][:500]
            results.append({"status": "failed", "reason": message, "build_s": time.perf_counter() - started})
            continue
        entry = {"status": "ok", "reason": None, "check": {**check.to_dict(), "noise_floor": reference.noise_floor},
                 "details": dict(model.details), "build_s": time.perf_counter() - started}
        if accuracy is not None:
            entry["details"]["accuracy"] = accuracy
        reason = None if candidate.config.get("stock") else _rejection(candidate, check, accuracy, reference)
        if reason is not None:
            entry["status"] = "rejected"
            entry["reason"] = reason
        else:
            runnable[len(results)] = model
        results.append(entry)
    if len(runnable) == 1:
        index, model = next(iter(runnable.items()))
        timing = time_calls(model.execute, job.harness, hopeless_ms=job.hopeless_ms)
        results[index]["samples_ms"] = timing.samples_ms
        if timing.stopped_early:
            results[index]["status"] = "skipped"
            results[index]["reason"] = (f"stopped early: {len(timing.samples_ms)} calls all slower than "
                                        f"{job.hopeless_ms:.4g} ms (fastest {min(timing.samples_ms):.4g} ms), "
                                        f"several times the best so far on this target")
    elif runnable:
        _head_to_head(job, runnable, results)
    if job.profile:
        for index, model in runnable.items():
            try:
                results[index]["details"]["op_class_ms"] = model.op_class_ms()
            except Exception as error:  # profiling is a nice-to-have for the report; never fail a trial on it
                results[index]["details"]["op_class_ms_error"] = str(error)[:200]
    return results


def _feeds_to_outputs(model):
    def run(feeds):
        model.bind(feeds)
        model.execute()
        return model.outputs()

    return run


def _rejection(candidate: Candidate, check, accuracy: dict | None, reference: Reference) -> str | None:
    """Why a candidate's results are not acceptable, or None. With --eval-data, reduced precision is judged by the
    metric drop on the user's data; otherwise (and always for fp32) by the output difference to the reference."""
    if accuracy is not None and candidate.config.get("precision", "fp32") != "fp32":
        if accuracy["passed"]:
            return None
        return (f"accuracy on --eval-data: {accuracy['metric']} {accuracy['value']:.4g} against {accuracy['reference']:.4g} "
                f"for the fp32 reference, a drop of {accuracy['drop']:.3g} > --max-accuracy-drop {accuracy['max_drop']:.3g}")
    if check.passed:
        return None
    return (f"outputs differ from the fp32 reference: max relative error {check.max_rel_error:.3g} "
            f"> tolerance {check.tolerance:.3g} (fp32 noise floor of this model {reference.noise_floor:.3g})")


def _head_to_head(job: MeasureJob, runnable: dict, results: list[dict]) -> None:
    """Time the runnable candidates in alternating rounds; each challenger gets its difference to the baseline."""
    rounds = interleaved_rounds({str(i): m.execute for i, m in runnable.items()}, job.harness)
    for key, blocks in rounds.items():
        results[int(key)]["samples_ms"] = [v for block in blocks for v in block]
        results[int(key)]["blocks"] = blocks
    if job.baseline is None or str(job.baseline) not in rounds:
        return
    for key, blocks in rounds.items():
        if int(key) != job.baseline:
            difference = paired_difference(blocks, rounds[str(job.baseline)], job.percentile, job.harness.confidence,
                                           job.harness.bootstrap_resamples)
            results[int(key)]["details"]["head_to_head"] = difference.to_dict()


@dataclass(frozen=True)
class ExecutionLimits:
    timeout_s: float
    memory_limit_mib: float | None
    log_path: Path | None


def run_job(job: MeasureJob, phase: str, limits: ExecutionLimits) -> list[Trial]:
    """Run a MeasureJob isolated and return one Trial per candidate, whatever happened to the child."""
    started = time.monotonic()
    result = run_isolated(measure_in_child, (job,), timeout_s=limits.timeout_s,
                          memory_limit_mib=limits.memory_limit_mib, log_path=limits.log_path)
    duration = time.monotonic() - started
    trials = []
    for index, candidate in enumerate(job.candidates):
        base = dict(id=candidate.trial_id(job.ctx.batch_size, phase), backend=candidate.backend,
                    target=candidate.target, config=dict(candidate.config), batch_size=job.ctx.batch_size,
                    phase=phase, peak_rss_mib=result.peak_rss_mib, duration_s=round(duration, 3))
        if not result.ok:
            trials.append(Trial(status="failed", reason=f"worker {result.reason}", **base))
            continue
        entry = result.value[index]
        check = entry.get("check") or {}
        samples = entry.get("samples_ms")
        latency = LatencyStats.from_samples(samples, job.harness.confidence, job.harness.bootstrap_resamples,
                                            blocks=entry.get("blocks")) if samples else None
        trials.append(Trial(status=entry["status"], reason=entry["reason"], latency=latency,
                            max_abs_error=check.get("max_abs_error"), max_rel_error=check.get("max_rel_error"),
                            tolerance=check.get("tolerance"), fp32_noise_floor=check.get("noise_floor"),
                            details=entry.get("details") or {}, **base))
    return trials
