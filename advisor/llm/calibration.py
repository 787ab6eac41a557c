"""The calibration loop: stored LLM measurements fit the performance model's efficiency factors.

A measurement (advisor.llm.measurement_record.LlmMeasurement) is step times, and optionally a serving run, of one
model on one hardware with one engine, with its versions and date. Stored ones live in
hwprofiles/measurements/llm/*.json; a user adds files or folders of their own (`load_measurements`).

Matching: a record calibrates a planned device when its engine is the same (case-insensitive) and its hardware is:
- a GPU: the same `gpu_key` (first word that is not the vendor: "NVIDIA H100 80GB HBM3" and "H100" both read H100).
  Memory size and form factor (SXM, PCIe) do not split a GPU: each record carries its own datasheet peak and
  bandwidth, so a factor fitted as a fraction of one variant's peaks applies as a fraction of the other's.
- a CPU: the same microarchitecture (the record's `hardware.detail["microarchitecture"]` or `["march"]`, else its
  name; compared lower-case without punctuation), because the planner names a CPU device by the catalogue's
  microarchitecture ("sapphirerapids"). What an engine reaches of a CPU's peak FLOPs and bandwidth depends on the
  core design (vector units, caches, memory controller), which the microarchitecture names; core count and clock
  are already in the record's peaks.

Fitting: every matched record becomes one advisor.llm.perf.FitGroup (its own ModelWork, and a Device from its
hardware figures at its tensor-parallel degree) and all are fitted at once (perf.fit_efficiency_jointly): one set
of factors for the engine on that device, however many models, precisions and TP degrees were measured. Serving
records add the steps that `reduce_serving` can defend.

Held-out error (`held_out_points`, `summarise_held_out`): each record's steps are predicted by a fit on the other
matched records only; where those have fewer than FIT_MIN_POINTS steps (a single record, say), each step is
predicted by a fit on every other step (leave one point out), and the point says which. The same points are also
predicted with the prior (prior_efficiency), so "before" and "after" fitting are compared on the same steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

import hwprofiles
from advisor.errors import UserError
from advisor.llm.measurement_record import Hardware, LlmMeasurement, MeasurementError, SCHEMA, StepTiming
from advisor.llm.perf import (FIT_MIN_POINTS, INTERCONNECT_KINDS, Device, Efficiency, FitGroup, PerfError, StepModel,
                              StepPoint, fit_efficiency_jointly, gpu_key, prior_efficiency)

STORED = Path(hwprofiles.__file__).parent / "measurements" / "llm"
METRICS = ("prefill_ms", "decode_ms", "ttft_ms", "itl_ms")
MAX_OVERLAP_LOAD = 0.1  # rate x mean e2e: an arrival finds another request in flight with probability 1 - e^-load
ASSUMED_MAX_CHUNK_TOKENS = 2048  # vLLM V1's smallest default max_num_batched_tokens (API server, smaller GPUs)


class CalibrationFileError(MeasurementError, UserError):
    """A measurement file that cannot be used (one line naming it): a MeasurementError the CLI shows as a user
    error (exit 2)."""


# ---------------------------------------------------------------------------------------------------- loading


def load_measurements(extra: Sequence[Path] = (), *, stored: bool = True) -> list[LlmMeasurement]:
    """The stored measurements (STORED/*.json, when `stored`) and the user's files or folders (*.json in a folder).

    A file holds one advisor.llm.measurement/v1 object, or an object with a "measurements" list of them (what
    bench/gpu_llm_calibration.py writes). A file that cannot be read or parsed raises CalibrationFileError naming it.
    Ids are unique: two stored files with one id, or two of the user's, are an error; a user's record with a stored
    record's id replaces it and says so in its notes."""
    stored_records = _read_all(sorted(Path(STORED).glob("*.json")) if stored else [])
    user_records = _read_all(_expand([Path(p) for p in extra]))
    by_id = {record.id: (record, path) for record, path in stored_records}
    merged = dict(by_id)
    for record, path in user_records:
        if record.id in by_id:
            note = f"replaces the stored measurement of the same id ({by_id[record.id][1].name})"
            record = dataclasses.replace(record, notes=record.notes + (note,))
        merged[record.id] = (record, path)
    return [record for record, _ in merged.values()]


def _expand(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise CalibrationFileError(f"{path}: no measurement files (*.json) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CalibrationFileError(f"{path}: no such measurement file or folder")
    return files


def _read_all(paths: list[Path]) -> list[tuple[LlmMeasurement, Path]]:
    """Every record of `paths`, in order; a duplicate id among them is an error naming both files."""
    seen: dict[str, Path] = {}
    records = []
    for path in paths:
        for record in _read_file(path):
            if record.id in seen:
                raise CalibrationFileError(f"{path}: measurement id {record.id!r} is also in {seen[record.id]}")
            seen[record.id] = path
            records.append((record, path))
    return records


def _read_file(path: Path) -> list[LlmMeasurement]:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise CalibrationFileError(f"{path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:
        raise CalibrationFileError(_one_line(f"{path}: not valid JSON ({error})")) from None
    if isinstance(data, dict) and data.get("schema") != SCHEMA and isinstance(data.get("measurements"), list):
        items = [(f"{path}: measurements[{i}]", item) for i, item in enumerate(data["measurements"])]
    else:
        items = [(str(path), data)]
    records = []
    for where, item in items:
        try:
            record = LlmMeasurement.from_dict(item)
        except MeasurementError as error:
            raise CalibrationFileError(_one_line(f"{where}: {error}")) from None
        except (PerfError, AttributeError) as error:  # ModelWork's own checks; a list where an object belongs
            raise CalibrationFileError(_one_line(f"{where}: malformed measurement: {error}")) from None
        if record.serving is not None and not isinstance(record.serving, dict):
            raise CalibrationFileError(f"{where}: 'serving' must be a bench-serve --json object, got "
                                       f"{type(record.serving).__name__}")
        records.append(record)
    return records


def _one_line(message: str) -> str:
    return " ".join(message.split())


# ---------------------------------------------------------------------------------------------------- matching


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def hardware_key(hardware: Hardware) -> str:
    """What a record's hardware is matched on: the GPU's `gpu_key`, or the CPU's microarchitecture (else its name),
    lower-case without punctuation (module docstring)."""
    if hardware.kind == "gpu":
        return gpu_key(hardware.name)
    march = hardware.detail.get("microarchitecture") or hardware.detail.get("march")
    return _normalise(str(march) if march else hardware.name)


def matches(record: LlmMeasurement, device_name: str, engine: str) -> bool:
    """Whether `record` measured `engine` on the device the planner calls `device_name`."""
    if record.engine.lower() != engine.lower():
        return False
    if record.hardware.kind == "gpu":
        return gpu_key(record.hardware.name) == gpu_key(device_name)
    return hardware_key(record.hardware) == _normalise(device_name)


def record_device(record: LlmMeasurement) -> Device:
    """The record's tensor-parallel group as the step model sees it: its datasheet peak and bandwidth per device,
    its TP degree, and the link from hardware.detail ("interconnect_gbs", "interconnect_kind") when it has one."""
    hardware, tp = record.hardware, record.tensor_parallel
    link = hardware.detail.get("interconnect_gbs") if tp > 1 else None
    kind = hardware.detail.get("interconnect_kind") if tp > 1 else None
    try:
        return Device(hardware.name, tp, hardware.peak_tflops, hardware.memory_bandwidth_gbs,
                      float(link) if link else None, kind if kind in INTERCONNECT_KINDS else None)
    except (PerfError, TypeError, ValueError) as error:
        raise MeasurementError(f"measurement {record.id}: unusable hardware figures: {error}") from None


# ---------------------------------------------------------------------------------------------------- serving runs


@dataclass(frozen=True)
class ServingSteps:
    """What a serving record says about single engine steps (reduce_serving)."""

    points: tuple[StepPoint, ...]
    metrics: tuple[str, ...]  # "ttft_ms" | "itl_ms", one per point
    refused: tuple[str, ...]  # why a metric (or the whole run) gave no point


def reduce_serving(record: LlmMeasurement) -> ServingSteps:
    """The steps a serving record (a bench-serve --json object) measures, where that is defensible.

    Only a run whose requests rarely overlap measures single steps: a closed loop of one user (settings
    concurrency 1), or arrivals at a rate low enough that load = rate x mean end-to-end latency is at most
    MAX_OVERLAP_LOAD (0.1). With Poisson arrivals the requests in flight are Poisson with mean `load` (M/G/inf), so
    an arrival finds another request running with probability 1 - e^-load (9.5 % at 0.1); above that, the engine
    batches requests together and a TTFT or ITL is no longer one step of one sequence: no points, and why. The
    achieved rate (request_rate_rps) is used when the record has it, else the one asked for (settings rate_rps).

    Then, with P the mean prompt and O the mean output tokens of the completed requests (bench-serve's "lengths":
    the server's prompt count where it reported one, else the requested; else settings prompt_tokens /
    output_tokens, a number or a length distribution with its "mean" or "fixed"):
    - TTFT p50 ~ one prefill step of P tokens (context (P + 1) / 2 on average): StepPoint(P, (P + 1) / 2, 0, 0).
      Refused when P exceeds the engine's chunk (settings max_num_batched_tokens, else ASSUMED_MAX_CHUNK_TOKENS,
      2048: vLLM V1's smallest default for its API server), as the prefill may then take several steps. TTFT also
      holds the request's HTTP, tokenisation and scheduling time, which no step term models: on short prompts
      the measured TTFT is expected above the prefill step.
    - ITL p50 ~ one decode step of one sequence at context P + O / 2 (the median of the contexts P + 1 .. P + O - 1
      its decode steps attend): StepPoint(0, 0, 1, round(P + O / 2)). Assumes one token per streamed chunk (vLLM
      streams one per step); refused when O < 2 (no gap).
    """
    serving = record.serving
    if not serving:
        return ServingSteps((), (), ())
    settings, lengths = _section(serving, "settings"), _section(serving, "lengths")
    prompt = (_number(lengths.get("prompt_tokens_reported_mean"))
              or _number(lengths.get("prompt_tokens_requested_mean")) or _mean_tokens(settings.get("prompt_tokens")))
    output = _number(lengths.get("output_tokens_mean")) or _mean_tokens(settings.get("output_tokens"))
    why_not = _overlap_refusal(serving, settings)
    if why_not:
        return ServingSteps((), (), (why_not,))
    if prompt is None or prompt < 1:
        return ServingSteps((), (), ("the serving run's settings give no mean prompt length",))
    points, metrics, refused = [], [], []
    ttft = _p50(serving, "ttft_ms")
    chunk = _number(settings.get("max_num_batched_tokens")) or ASSUMED_MAX_CHUNK_TOKENS
    if ttft is None:
        refused.append("no TTFT p50")
    elif prompt > chunk:
        refused.append(f"TTFT: a {prompt:.0f}-token prompt may be prefilled in several chunks of {chunk:.0f} tokens")
    else:
        tokens = max(1, round(prompt))
        points.append(StepPoint(tokens, (tokens + 1) / 2, 0, 0, ttft))
        metrics.append("ttft_ms")
    itl = _p50(serving, "itl_ms")
    if itl is None:
        refused.append("no ITL p50")
    elif output is None or output < 2:
        refused.append("ITL: fewer than 2 output tokens per request (or none stated)")
    else:
        points.append(StepPoint(0, 0.0, 1, round(prompt + output / 2), itl))
        metrics.append("itl_ms")
    return ServingSteps(tuple(points), tuple(metrics), tuple(refused))


def serving_points(record: LlmMeasurement) -> list[StepPoint]:
    """The engine steps a serving record stands for (reduce_serving has the reduction and the refusals)."""
    return list(reduce_serving(record).points)


def _overlap_refusal(serving: dict, settings: dict) -> str | None:
    concurrency = settings.get("concurrency")
    if concurrency == 1:
        return None
    rate = (_number(serving.get("request_rate_rps")) or _number(settings.get("rate_rps"))
            or _number(settings.get("rate")))
    e2e = _number(_section(serving, "e2e_ms").get("mean")) or _p50(serving, "e2e_ms")
    if not rate or not e2e or not math.isfinite(rate):
        if concurrency:
            return f"closed loop of {concurrency} users: requests share engine steps"
        return "neither concurrency 1 nor a finite rate with a mean e2e latency: cannot tell whether requests overlap"
    load = rate * e2e / 1000.0
    if load > MAX_OVERLAP_LOAD:
        return (f"load {load:.2f} (rate {rate:g}/s x mean e2e {e2e:.0f} ms) above {MAX_OVERLAP_LOAD}: "
                f"~{1 - math.exp(-load):.0%} of requests arrive while another is in flight")
    return None


def _number(value) -> float | None:
    """A positive number (inf allowed), else None: bench-serve files are read leniently, a bad field gives no point."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _section(data: dict, key: str) -> dict:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _mean_tokens(value) -> float | None:
    if isinstance(value, dict):
        return _number(value.get("mean")) or _number(value.get("fixed"))
    return _number(value)


def _p50(serving: dict, metric: str) -> float | None:
    value = _number(_section(serving, metric).get("p50"))
    return value if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------- steps of a record


@dataclass(frozen=True)
class LabelledStep:
    metric: str  # prefill_ms | decode_ms | ttft_ms | itl_ms
    label: str  # "prefill 1x128", "decode 4 @ 256", "serving TTFT p50 (prompt 128)"
    point: StepPoint


@dataclass(frozen=True)
class RecordSteps:
    record: LlmMeasurement
    device: Device
    steps: tuple[LabelledStep, ...]
    refused: tuple[str, ...]  # serving metrics that gave no step, and why

    def group(self, leave_out: int | None = None) -> FitGroup:
        return FitGroup(self.record.work, self.device,
                        tuple(s.point for i, s in enumerate(self.steps) if i != leave_out))


# A step model's bandwidth term means DRAM/HBM bandwidth only when the weights a step reads do not stay in the
# caches between steps. A server CPU's last-level cache reaches ~100-400 MB (a VM sees part of it), a GPU's L2
# 50-100 MB: weights below these floors measure cache bandwidth and would teach the planner a DRAM efficiency above
# 1 (seen: a 0.8 MB tiny model fitted e_bandwidth 1.5 on a Xeon). Such records are kept, and reported, not fitted.
MIN_DRAM_WEIGHT_BYTES = {"cpu": 512 * 2**20, "gpu": 1 * 2**30}


def cache_resident_reason(record: LlmMeasurement) -> str | None:
    """Why the record cannot calibrate bandwidth (its weights fit in the caches), or None."""
    floor = MIN_DRAM_WEIGHT_BYTES[record.hardware.kind]
    if record.work.weight_bytes < floor:
        return (f"its weights ({record.work.weight_bytes / 2**20:.1f} MiB) are under {floor / 2**20:.0f} MiB and stay "
                f"in the {record.hardware.kind}'s caches: its steps do not measure memory bandwidth")
    return None


def record_steps(record: LlmMeasurement) -> RecordSteps:
    """Every step a record measured (its step timings, then what its serving run reduces to); none from a record
    whose weights stay in the caches (cache_resident_reason)."""
    why = cache_resident_reason(record)
    if why:
        return RecordSteps(record, record_device(record), (), (why,))
    steps = [LabelledStep(f"{s.kind}_ms", _label(s), s.point()) for s in record.steps]
    serving = reduce_serving(record)
    for metric, point in zip(serving.metrics, serving.points):
        label = f"serving TTFT p50 (prompt {point.prefill_tokens})" if metric == "ttft_ms" else \
            f"serving ITL p50 (context {point.decode_context_tokens})"
        steps.append(LabelledStep(metric, label, point))
    return RecordSteps(record, record_device(record), tuple(steps), serving.refused)


def _label(step: StepTiming) -> str:
    if step.kind == "prefill":
        return f"prefill {step.batch}x{step.prompt_tokens}"
    return f"decode {step.batch} @ {step.context}"


# ---------------------------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """Efficiency factors fitted on measurements of one device and engine, with the held-out error of the fit."""

    efficiency: Efficiency
    measurements: tuple[str, ...]  # ids of the records fitted
    points: int  # steps fitted
    held_out_error: dict | None  # summarise_held_out(): per metric, fitted vs prior; None when nothing was held out
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"efficiency": self.efficiency.to_dict(), "measurements": list(self.measurements),
                "points": self.points, "held_out_error": self.held_out_error, "notes": list(self.notes)}


def calibrate(device_name: str, engine: str, measurements: Sequence[LlmMeasurement]) -> Calibration | None:
    """One fit of every matching record (module docstring), or None with fewer than FIT_MIN_POINTS steps.

    The band (relative_interval) is the in-sample band of the fit (perf.fit_efficiency_jointly) widened to the
    2.5-97.5 % range of the held-out measured / predicted ratios where any were held out: a prediction for a new
    model carries at least the error the fit showed on steps it did not see."""
    matched = [record_steps(r) for r in measurements if matches(r, device_name, engine)]
    count = sum(len(m.steps) for m in matched)
    if count < FIT_MIN_POINTS:
        return None
    prior = prior_efficiency(device_name, engine)
    fitted = fit_efficiency_jointly([m.group() for m in matched], prior=prior, engine=engine)
    held = _held_out(matched, prior, device_name, engine)
    summary = summarise_held_out(held) if held else None
    lo, hi = fitted.relative_interval
    detail = ""
    if held:
        ratios = [p.measured_ms / p.fitted_ms for p in held]
        lo, hi = min(lo, float(np.quantile(ratios, 0.025))), max(hi, float(np.quantile(ratios, 0.975)))
        errors = [p.fitted_error for p in held]
        detail = f" (held-out |error| median {statistics.median(errors):.0%}, max {max(errors):.0%})"
    ids = tuple(m.record.id for m in matched if m.steps)  # a serving run refused as a whole gave nothing
    efficiency = dataclasses.replace(fitted, relative_interval=(lo, hi),
                                     source=f"fitted on {count} steps of {', '.join(ids)}{detail}")
    notes = tuple(f"{m.record.id}: not used: {why}" for m in matched for why in m.refused)
    return Calibration(efficiency, ids, count, summary, notes)


def efficiency_for(device_name: str, engine: str, measurements: Sequence[LlmMeasurement]) -> Efficiency:
    """The calibration's factors when the measurements hold enough steps of this device and engine, else the
    published prior (prior_efficiency)."""
    calibration = calibrate(device_name, engine, measurements)
    return calibration.efficiency if calibration else prior_efficiency(device_name, engine)


# ---------------------------------------------------------------------------------------------------- held-out error


@dataclass(frozen=True)
class HeldOutPoint:
    """One measured step predicted by a fit that did not see it, and by the prior."""

    record: str
    metric: str
    label: str
    scheme: str  # "other records" (fit on the other matched records) | "other points" (on every other step)
    measured_ms: float
    fitted_ms: float
    prior_ms: float
    fitted_band: tuple[float, float]  # the relative_interval of the fit that predicted it
    prior_band: tuple[float, float]

    @property
    def fitted_error(self) -> float:
        """|predicted - measured| / measured."""
        return abs(self.fitted_ms - self.measured_ms) / self.measured_ms

    @property
    def prior_error(self) -> float:
        return abs(self.prior_ms - self.measured_ms) / self.measured_ms

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["fitted_band"], data["prior_band"] = list(self.fitted_band), list(self.prior_band)
        return data


def held_out_points(device_name: str, engine: str, measurements: Sequence[LlmMeasurement]) -> list[HeldOutPoint]:
    """Every step of the matching records predicted by a fit that did not see it (module docstring)."""
    matched = [record_steps(r) for r in measurements if matches(r, device_name, engine)]
    return _held_out(matched, prior_efficiency(device_name, engine), device_name, engine)


def _held_out(matched: list[RecordSteps], prior: Efficiency, device_name: str, engine: str) -> list[HeldOutPoint]:
    result = []
    for index, mine in enumerate(matched):
        others = [m.group() for j, m in enumerate(matched) if j != index]
        prior_model = StepModel(mine.record.work, mine.device, prior)
        if sum(len(g.points) for g in others) >= FIT_MIN_POINTS:
            fits = [(fit_efficiency_jointly(others, prior=prior, engine=engine), "other records")] * len(mine.steps)
        else:
            fits = []
            for leave in range(len(mine.steps)):
                training = others + [mine.group(leave_out=leave)]
                if sum(len(g.points) for g in training) < FIT_MIN_POINTS:
                    break
                fits.append((fit_efficiency_jointly(training, prior=prior, engine=engine), "other points"))
        for step, (efficiency, scheme) in zip(mine.steps, fits):
            p = step.point
            args = (p.prefill_tokens, p.prefill_context, p.decode_sequences, p.decode_context_tokens)
            fitted_ms = StepModel(mine.record.work, mine.device, efficiency).step_ms(*args)
            result.append(HeldOutPoint(mine.record.id, step.metric, step.label, scheme, p.measured_ms, fitted_ms,
                                       prior_model.step_ms(*args), efficiency.relative_interval,
                                       prior.relative_interval))
    return result


def summarise_held_out(points: Sequence[HeldOutPoint]) -> dict:
    """Per metric (prefill_ms, decode_ms, ttft_ms, itl_ms, and "all"): the number of held-out steps, how they were
    held out, and for the fit ("fitted") and the prior ("prior") on the same steps: the median and max
    |predicted - measured| / measured, the range of measured / predicted, and the share of steps whose measurement
    lies inside the prediction x its band (relative_interval)."""
    summary = {}
    for metric in METRICS + ("all",):
        chosen = [p for p in points if metric in ("all", p.metric)]
        if not chosen:
            continue
        summary[metric] = {"points": len(chosen), "schemes": sorted({p.scheme for p in chosen}),
                           "fitted": _errors([(p.measured_ms, p.fitted_ms, p.fitted_band) for p in chosen]),
                           "prior": _errors([(p.measured_ms, p.prior_ms, p.prior_band) for p in chosen])}
    return summary


def _errors(rows: list[tuple[float, float, tuple[float, float]]]) -> dict:
    errors = [abs(predicted - measured) / measured for measured, predicted, _ in rows]
    ratios = [measured / predicted for measured, predicted, _ in rows]
    inside = [band[0] <= measured / predicted <= band[1] for measured, predicted, band in rows]
    return {"median_abs_error": statistics.median(errors), "max_abs_error": max(errors),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "inside_band": sum(inside) / len(inside)}
