"""Building and measuring candidates in isolated child processes, and turning what happened into Trials.

The child builds each candidate with its tuner, checks its outputs against the ONNX Runtime fp32 reference and
times it with the shared harness. Several candidates given together are timed interleaved in that one child
(the head-to-head `confirm` phase), so they are compared under the same conditions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from advisor.feeds import make_feeds
from advisor.isolation import run_isolated
from advisor.measure import HarnessSettings, LatencyStats, compare_outputs, interleaved_samples, time_calls
from advisor.model import ModelInfo
from advisor.trials import Trial
from tuners.base import Candidate, TuneContext

FP32_TOLERANCE = 1e-3  # fp32 candidates differ from the reference only by operator fusion and reordering


@dataclass(frozen=True)
class MeasureJob:
    candidates: tuple[Candidate, ...]
    ctx: TuneContext
    data_path: Path  # feeds and reference outputs for ctx.batch_size
    harness: HarnessSettings
    profile: bool = False  # also record time per operator class (for the cost model and the report)


def reference_data_path(data_dir: Path, batch_size: int) -> Path:
    return data_dir / f"reference-b{batch_size}.npz"


def reference_outputs(model_path: Path, feeds) -> list:
    """The fp32 reference every candidate is checked against: ONNX Runtime on the CPU, graph optimisations off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def _compute_reference(info: ModelInfo, batch_size: int, path: Path) -> None:
    feeds = make_feeds(info, batch_size)
    outputs = reference_outputs(info.path, feeds)
    arrays = {f"in:{name}": value for name, value in feeds.items()}
    arrays.update({f"out:{i}": np.asarray(value) for i, value in enumerate(outputs)})
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


def load_reference(path: Path) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    with np.load(path) as data:
        feeds = {key[3:]: data[key] for key in data.files if key.startswith("in:")}
        outputs = [data[f"out:{i}"] for i in range(sum(1 for k in data.files if k.startswith("out:")))]
    return feeds, outputs


def _tolerance(candidate: Candidate, ctx: TuneContext) -> float:
    return FP32_TOLERANCE if candidate.config.get("precision", "fp32") == "fp32" else ctx.tolerance


def measure_in_child(job: MeasureJob) -> list[dict]:
    """Child-process entry: build, check and time each candidate; returns one plain dict per candidate."""
    from tuners.registry import load_tuner

    feeds, reference = load_reference(job.data_path)
    results: list[dict] = []
    runnable = {}
    for candidate in job.candidates:
        tuner = load_tuner(candidate.backend)
        started = time.perf_counter()
        try:
            model = tuner.build(candidate, job.ctx)
            model.bind(feeds)
            model.execute()
            check = compare_outputs(model.outputs(), reference, _tolerance(candidate, job.ctx))
        except Exception as error:  # a build error is a failed trial, not a failed run
            message = f"{type(error).__name__}: {error}".strip().splitlines()[0][:500]
            results.append({"status": "failed", "reason": message, "build_s": time.perf_counter() - started})
            continue
        entry = {"status": "ok", "reason": None, "check": check.to_dict(), "details": dict(model.details),
                 "build_s": time.perf_counter() - started}
        if not check.passed:
            entry["status"] = "rejected"
            entry["reason"] = (f"outputs differ from the fp32 reference: max relative error {check.max_rel_error:.3g} "
                               f"> tolerance {check.tolerance:g}")
        else:
            runnable[len(results)] = model
        results.append(entry)
    if len(runnable) == 1:
        index, model = next(iter(runnable.items()))
        results[index]["samples_ms"] = time_calls(model.execute, job.harness)
    elif runnable:
        samples = interleaved_samples({str(i): m.execute for i, m in runnable.items()}, job.harness)
        for key, values in samples.items():
            results[int(key)]["samples_ms"] = values
    if job.profile:
        for index, model in runnable.items():
            try:
                results[index]["details"]["op_class_ms"] = model.op_class_ms()
            except Exception as error:  # profiling is a nice-to-have for the report; never fail a trial on it
                results[index]["details"]["op_class_ms_error"] = str(error)[:200]
    return results


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
        latency = LatencyStats.from_samples(samples, job.harness.confidence, job.harness.bootstrap_resamples) \
            if samples else None
        trials.append(Trial(status=entry["status"], reason=entry["reason"], latency=latency,
                            max_abs_error=check.get("max_abs_error"), max_rel_error=check.get("max_rel_error"),
                            details=entry.get("details") or {}, **base))
    return trials
