"""Ranking catalogue instances by cost per million inferences among those meeting the SLO.

Every row is `measured` (the instance's hardware was measured: this machine or a cluster node of that type) or
`estimated` (advisor.costmodel, anchored on the nearest measured hardware), always with an interval, and always at
the batch size it is sized at: its latency includes the wait to fill that batch. A GPU instance with no GPU
measured gets no row at all: it is listed under `not_measured`, unpriced.

The steps of `rank`: the candidate curves of each measured target (tuning.py's winner and baseline, measured
under one protocol), each instance's best row (measured where its hardware was measured, else estimated), the
recommendation (a measured row unless an estimate is cheaper even at the pessimistic end of its interval), then
the order, the Pareto frontier and the closest miss.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from advisor.costmodel import (CROSS_HARDWARE_FACTOR, Hardware, LatencyModel, Observation, Work,
                               derived_cpu_hardware, family_of, transfer)
from advisor.model import ModelInfo
from advisor.sizing import (EXTRAPOLATION_CAP, BatchCurve, BatchPoint, batching_window_ms, cost_per_million,
                            instances_needed, memory_needed_gib, monthly_cost, throughput_per_s)
from advisor.slo import Slo, judge
from advisor.trials import Trial
from hwprofiles.catalog import Catalog, Instance
from hwprofiles.targets import Target
from tuners.registry import accepts_any_batch, portable_across_cpus, thread_count

NEAR_TIE = 0.05  # rows within 5 % of the winner's cost are shown as ties
NOT_MEASURED_GPU = "not measured: run on a GPU host or add a GPU node to --cluster"


@dataclass(frozen=True)
class RankingInputs:
    info: ModelInfo
    trials: Sequence[Trial]
    targets: Sequence[Target]
    catalog: Catalog
    slo: Slo
    qps: float | None = None
    utilisation: float = 0.7
    local_price_per_hour: float | None = None
    batch_size: int | None = None


@dataclass(frozen=True)
class RankedRow:
    instance: str
    provider: str
    region: str
    price_per_hour: float | None
    backend: str
    trial_id: str
    config: dict
    target: str
    batch_size: int  # the batch size the row is sized at: every figure below is at this size
    source: str  # measured | estimated
    latency_ms: float  # the SLO percentile at batch_size, plus batching_wait_ms
    latency_ms_interval: tuple[float, float]
    slo_verdict: str
    slo_margin_ms: float
    meets_slo: bool
    cost_per_million: float | None
    instances_needed: int | None
    monthly_cost: float | None
    memory_needed_gib: float | None
    throughput_per_s: float | None
    notes: tuple[str, ...] = ()
    recommendable: bool = True  # False for figures one cannot act on (a CPU-specific build on another CPU)
    batch_basis: str = "measured"  # how batch_size's figures were obtained: measured | interpolated | extrapolated
    batching_wait_ms: float = 0.0  # worst-case wait to fill the batch at the instance's arrival rate
    processing_ms: float | None = None  # the SLO percentile of one call at batch_size, without the wait
    cost_per_million_interval: tuple[float, float] | None = None  # at the ends of the latency interval
    not_recommendable_reason: str | None = None
    estimate_relation: str | None = None  # estimated rows: same | same_vendor | same_arch | other_arch | gpu_from_gpu
    batch_fit: str | None = None  # the latency-vs-batch fit behind a fitted batch_size
    verify_on_instance: bool = False  # a cheaper estimate not recommended: it is not cheaper at its pessimistic end
    role: str | None = None  # winner | baseline of the target's head-to-head (None: no head-to-head ran)
    solo_check_agrees: bool | None = None  # the solo figure agrees with the head-to-head one (None: not checked)
    sufficient_samples: bool = True  # at least MIN_SAMPLES samples for the SLO percentile

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["latency_ms_interval"] = list(self.latency_ms_interval)
        if self.cost_per_million_interval is not None:
            data["cost_per_million_interval"] = list(self.cost_per_million_interval)
        data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class Ranking:
    rows: tuple[RankedRow, ...]
    excluded: tuple[dict, ...]
    pareto: tuple[str, ...]
    recommendation: RankedRow | None
    closest_miss: RankedRow | None
    costmodel: dict
    local_peaks: dict = field(default_factory=dict)
    not_measured: tuple[dict, ...] = ()  # instances listed without latency or cost (a GPU with no GPU measured)

    def to_dict(self) -> dict:
        return {"rows": [r.to_dict() for r in self.rows], "excluded": list(self.excluded),
                "not_measured": list(self.not_measured), "pareto": list(self.pareto),
                "recommendation": self.recommendation.to_dict() if self.recommendation else None,
                "closest_miss": self.closest_miss.to_dict() if self.closest_miss else None,
                "costmodel": self.costmodel}


@dataclass
class CandidateCurve:
    """One backend configuration measured on one target, at one or more batch sizes, under one protocol."""

    backend: str
    target: str
    config: dict
    by_batch: dict[int, Trial]
    role: str | None = None  # winner | baseline (tuning.py's sweep)
    run_to_run: float = 1.0  # each measured interval is widened by this factor at both ends (run_to_run_factor)

    def threads(self) -> int:
        """The threads one inference uses (0: all cores), from the backend's declared thread setting."""
        return thread_count(self.backend, self.config)

    def points(self, percentile: str) -> dict[int, BatchPoint]:
        return {b: _measured_figure(t, percentile, self.run_to_run) for b, t in self.by_batch.items()}

    def batch_curve(self, percentile: str) -> BatchCurve | None:
        """The latency-vs-batch fit on this candidate's measured sizes (None when measured at one size)."""
        return BatchCurve.fit(list(self.points(percentile).values()))


@dataclass(frozen=True)
class RunToRun:
    """How far two solo measurements of one configuration at one batch size, in two processes of this run,
    disagree (the search's and the sweep's), at least RUN_TO_RUN_FLOOR. A bootstrap interval only covers the
    sampling error of one process's window; a figure measured again a minute later in another process moves by
    more, and the published interval must hold that too (bench/truth.py checks it against fresh processes).

    Beyond RUN_TO_RUN_CAP the machine was busy while it measured (another job took the cores for a while): the
    intervals are widened by the cap only, and `busy` says the figures need a rerun on a quiet machine (a 35x
    disagreement would otherwise make every row "borderline" and the verdict "nothing meets the SLO")."""

    factor: float
    pairs: int
    largest_observed: float | None

    @property
    def busy(self) -> bool:
        return self.largest_observed is not None and self.largest_observed > RUN_TO_RUN_CAP

    def note(self) -> str | None:
        if not self.busy:
            return None
        return (f"one configuration measured {self.largest_observed:.1f}x apart in two processes of this run: the "
                f"machine was busy while measuring; intervals are widened by {RUN_TO_RUN_CAP:g}x only; rerun on a "
                f"quiet machine before relying on these figures")

    def to_dict(self) -> dict:
        return {"factor": self.factor, "floor": RUN_TO_RUN_FLOOR, "cap": RUN_TO_RUN_CAP, "pairs": self.pairs,
                "largest_observed": self.largest_observed, "busy": self.busy, "note": self.note()}


RUN_TO_RUN_FLOOR = 1.2  # docs/NOTES: one configuration measured in two processes differs by 10-20 %
RUN_TO_RUN_CAP = 2.0  # NOTES: "at times 2x when neighbours are busy"; beyond that a measurement is not a figure


def run_to_run_factor(trials: Sequence[Trial], percentile: str) -> RunToRun:
    figures: dict[str, list[float]] = {}
    for trial in trials:
        if trial.ok and trial.phase in ("search", "sweep") and trial.latency.at(percentile) > 0:
            key = json.dumps([trial.backend, trial.target, dict(trial.config), trial.batch_size], sort_keys=True)
            figures.setdefault(key, []).append(trial.latency.at(percentile))
    ratios = [max(values) / min(values) for values in figures.values() if len(values) >= 2]
    largest = max(ratios, default=None)
    return RunToRun(min(RUN_TO_RUN_CAP, max(RUN_TO_RUN_FLOOR, largest or 0.0)), len(ratios), largest)


def _curves(trials: Sequence[Trial], run_to_run: float = 1.0) -> list[CandidateCurve]:
    """The curves the ranking may use. On a target whose winner and baseline were swept (tuning.py), only those
    two, from their sweep trials alone: the head-to-head decided between candidates, the sweep measured them solo
    at every batch size, and no curve mixes the two protocols. Elsewhere (no sweep ran: budget spent, an older
    run) every configuration, each from one phase (sweep, else search); head-to-head figures never enter."""
    ok = [t for t in trials if t.ok]
    swept = {t.target for t in ok if t.phase == "sweep" and t.details.get("role")}
    curves: dict[str, CandidateCurve] = {}
    for phase in ("sweep", "search"):
        for trial in (t for t in ok if t.phase == phase):
            if trial.target in swept and (phase != "sweep" or not trial.details.get("role")):
                continue
            key = json.dumps([trial.backend, trial.target, dict(trial.config)], sort_keys=True)
            curve = curves.setdefault(key, CandidateCurve(trial.backend, trial.target, dict(trial.config), {},
                                                          trial.details.get("role"), run_to_run))
            if not curve.by_batch or next(iter(curve.by_batch.values())).phase == phase:
                curve.by_batch.setdefault(trial.batch_size, trial)
    return list(curves.values())


def peak_gflops(instance: Instance, precision: str = "fp32") -> float:
    """The instance's compute peak for a candidate's precision: a GPU's fp16/bf16 tensor-core and int8 peaks are
    several times its fp32 one, in ratios that differ between GPU models. CPUs keep their fp32 peak: the catalogue's
    CPU fp16 figures are not what their runtimes reach, and a reduced-precision CPU build is not moved to another
    CPU type by its peak."""
    if instance.gpu is None:
        return instance.peak.fp32_gflops
    if precision in ("fp16", "bf16"):
        return instance.peak.fp16_gflops
    if precision.startswith("int8"):
        return instance.peak.int8_gops
    return instance.peak.fp32_gflops


def instance_hardware(instance: Instance, precision: str = "fp32") -> Hardware:
    """An instance's figures; a CPU instance counts its vCPUs as cores, as a VM shows them to the measured
    machine's OS (target_hardware does the same), so SMT instances are counted alike on both sides."""
    cores = instance.gpu.count if instance.gpu else instance.vcpus
    return Hardware(peak_gflops(instance, precision), instance.peak.bandwidth_gbs, cores,
                    family_of(instance.cpu.vendor, gpu=instance.gpu is not None),
                    instance.gpu.model if instance.gpu else instance.cpu.microarchitecture)


def matches(instance: Instance, target: Target) -> bool:
    """Measured results attach to instances with the same hardware: a cluster node's own instance; for this
    machine, the same GPU type, or the same CPU microarchitecture and vCPU count (a VM shows vCPUs as cores)."""
    if target.instance is not None:
        return target.instance == instance.name
    if target.kind == "cuda":
        return instance.gpu is not None and target.gpu is not None and instance.gpu.model == target.gpu.catalog_type
    return (instance.gpu is None and instance.cpu.microarchitecture == target.cpu.microarchitecture
            and instance.vcpus == target.cpu.logical_cores)


def target_hardware(target: Target, catalog: Catalog, precision: str = "fp32") -> tuple[Hardware, str]:
    """The measured machine's figures: a matching catalogue entry's per-vCPU figures times the logical CPUs this
    machine shows, else derived from its ISA. A GPU's peak is the one for `precision` (peak_gflops)."""
    match = next((i for i in catalog.instances if matches(i, target)), None)
    if match is not None:
        listed = instance_hardware(match, precision)
        if target.kind == "cuda" or target.cpu.logical_cores == listed.cores:
            return listed, f"catalogue entry {match.name}"
        cores = target.cpu.logical_cores
        return (Hardware(listed.peak_gflops / listed.cores * cores, listed.bandwidth_gbs / listed.cores * cores,
                         cores, listed.family, listed.microarchitecture),
                f"catalogue entry {match.name}, per-vCPU figures x {cores} logical CPUs")
    if target.kind == "cuda":
        return Hardware(10_000.0, 500.0, 1, "gpu", target.gpu.name if target.gpu else "gpu"), "assumed GPU figures"
    cpu = target.cpu
    return derived_cpu_hardware(cpu.isa, cpu.physical_cores, cpu.vendor, cpu.microarchitecture), \
        f"derived from ISA at {3.0:g} GHz"


def _measured_figure(trial: Trial, percentile: str, run_to_run: float = 1.0) -> BatchPoint:
    low, high = trial.latency.intervals[percentile]
    return BatchPoint(trial.batch_size, trial.latency.at(percentile), (low / run_to_run, high * run_to_run),
                      trial.latency.mean)


def _with_fitted(measured: dict[int, BatchPoint], fit: BatchCurve | None, inputs: RankingInputs,
                 fits_memory: Callable[[int], bool]) -> dict[int, BatchPoint]:
    """The measured points plus the fit's points between (and up to its cap beyond) them that fit in memory; none
    when --batch fixes the batch size."""
    if fit is None or inputs.batch_size is not None:
        return dict(measured)
    fitted = {b: fit.estimate(b) for b in fit.fitted_batch_sizes() if fits_memory(b)}
    return {**measured, **fitted}


class _Estimator:
    """Fits one latency model per measured target and backend, and moves measurements to other hardware."""

    def __init__(self, inputs: RankingInputs, measured: list[tuple[Target, Hardware]]):
        self.inputs = inputs
        self.measured = measured
        self.models: dict[tuple[str, str], LatencyModel] = {}
        for target, hardware in measured:
            by_backend: dict[str, list[Observation]] = {}
            for trial in inputs.trials:
                # solo measurements only (search and sweep): a head-to-head's figures are for deciding, not fitting
                if (trial.ok and trial.target == target.id and trial.phase != "confirm"
                        and trial.config.get("precision", "fp32") == "fp32"):
                    threads = thread_count(trial.backend, trial.config)
                    profile = trial.details.get("op_class_ms") or None
                    by_backend.setdefault(trial.backend, []).append(
                        Observation(Work.of(inputs.info, trial.batch_size), threads, hardware, trial.latency.p50,
                                    profile))
            for backend, observations in by_backend.items():
                self.models[target.id, backend] = LatencyModel.fit(observations)

    def fitted_targets(self) -> set[str]:
        return {target for target, _ in self.models}

    def model_for(self, trial: Trial) -> LatencyModel:
        """The fit of the trial's own backend, else (a backend measured only at reduced precision) the target's
        largest fit."""
        own = self.models.get((trial.target, trial.backend))
        if own is not None:
            return own
        return max((m for (t, _), m in self.models.items() if t == trial.target), key=lambda m: m.n)

    def reference_for(self, instance: Instance) -> tuple[Target, Hardware] | None:
        """The measured target most like this instance: same kind first, then same family, then most cores."""
        want_gpu = instance.gpu is not None
        other = instance_hardware(instance)
        usable = [(t, h) for t, h in self.measured if t.id in self.fitted_targets()]
        if not usable:
            return None
        return max(usable, key=lambda th: ((th[0].kind == "cuda") == want_gpu, th[1].family == other.family,
                                           th[1].microarchitecture == other.microarchitecture, th[1].cores))

    def figure(self, point: BatchPoint, trial: Trial, reference: Hardware,
               instance: Instance) -> tuple[BatchPoint, str]:
        """A point of the candidate (measured, or from its batch fit) moved to the instance; `trial` is any of the
        candidate's trials (its backend and config pick the latency model and the threads)."""
        model = self.model_for(trial)
        work = Work.of(self.inputs.info, point.batch_size)
        # the candidate runs with its own thread setting there too (0, ONNX Runtime's default: all cores)
        threads = thread_count(trial.backend, trial.config)
        other = instance_hardware(instance, str(trial.config.get("precision", "fp32")))
        latency, interval, kind = transfer(point.latency_ms, point.interval_ms, model, work, reference, threads,
                                           other, threads)
        mean, _, _ = transfer(point.mean_ms, (point.mean_ms, point.mean_ms), model, work, reference, threads, other,
                              threads)
        return replace(point, latency_ms=latency, interval_ms=interval, mean_ms=mean), kind

    def fits_of(self, target_id: str) -> dict[str, dict]:
        return {backend: m.to_dict() for (t, backend), m in self.models.items() if t == target_id}


# --- one row: an instance served by one candidate at the batch size that serves it cheapest --------------------

def _arrival_rate(inputs: RankingInputs, throughput: float) -> float:
    """Requests per second one instance receives: with --qps, the load spread over the instances it needs; without,
    a fleet sized at --utilisation (each instance then sees utilisation x its throughput)."""
    if inputs.qps:
        return inputs.qps / instances_needed(inputs.qps, throughput, inputs.utilisation)
    return inputs.utilisation * throughput


@dataclass(frozen=True)
class _Served:
    """A batch size's figures as the row reports them: the call's latency plus the wait to fill the batch."""

    point: BatchPoint
    wait_ms: float
    throughput: float

    @property
    def latency_ms(self) -> float:
        return self.point.latency_ms + self.wait_ms

    @property
    def interval_ms(self) -> tuple[float, float]:
        return self.point.interval_ms[0] + self.wait_ms, self.point.interval_ms[1] + self.wait_ms


def _served(inputs: RankingInputs, point: BatchPoint) -> _Served:
    throughput = throughput_per_s(point.batch_size, point.mean_ms)
    return _Served(point, batching_window_ms(point.batch_size, _arrival_rate(inputs, throughput)), throughput)


def _serving_batch(inputs: RankingInputs, figures: dict[int, BatchPoint]) -> _Served:
    """The largest-throughput batch whose whole interval, wait included, meets the SLO; else the SLO's batch."""
    slo_batch = inputs.batch_size or 1
    best = _served(inputs, figures[slo_batch])
    for batch, point in sorted(figures.items()):
        if inputs.batch_size is not None and batch != inputs.batch_size:
            continue
        served = _served(inputs, point)
        if served.interval_ms[1] <= inputs.slo.latency_ms and (
                served.throughput > best.throughput or best.interval_ms[1] > inputs.slo.latency_ms):
            best = served
    return best


@dataclass(frozen=True)
class _RowFacts:
    """Where a row's figures come from, besides the curve."""

    name: str
    provider: str
    region: str
    price: float | None
    source: str  # measured | estimated
    notes: tuple[str, ...] = ()
    relation: str | None = None
    not_recommendable: str | None = None


def _row(inputs: RankingInputs, facts: _RowFacts, curve: CandidateCurve, figures: dict[int, BatchPoint],
         memory_gib: float | None, fit: BatchCurve | None = None) -> RankedRow:
    slo = inputs.slo
    served = _serving_batch(inputs, figures)
    point = served.point
    verdict = judge(slo, served.latency_ms, served.interval_ms)
    batch_fit = None
    notes = facts.notes
    if point.basis != "measured" and fit is not None:
        beyond = (f" (cap {fit.max_batch_size}: {EXTRAPOLATION_CAP}x the largest measured)"
                  if point.basis == "extrapolated" else "")
        batch_fit = fit.describe() + beyond
        notes = (*notes, f"batch {point.batch_size} {point.basis}: {batch_fit}")
        memory_gib = _memory(inputs, curve, point.batch_size)
    price = facts.price
    cost = cost_per_million(price, served.throughput) if price else None
    cost_interval = None
    if cost is not None:
        # cost scales with the time per call: at the ends of the call's latency interval
        cost_interval = (cost * point.interval_ms[0] / point.latency_ms, cost * point.interval_ms[1] / point.latency_ms)
    needed = instances_needed(inputs.qps, served.throughput, inputs.utilisation) if inputs.qps else None
    monthly = monthly_cost(needed, price) if needed and price else None
    trial = curve.by_batch.get(point.batch_size) or curve.by_batch[inputs.batch_size or 1]
    if facts.source == "estimated" and verdict.verdict != "misses" and served.interval_ms[1] > slo.latency_ms:
        notes = (*notes, "verify on the instance: the estimate's interval crosses the SLO")
    solo = trial.details.get("solo_check") or {}
    return RankedRow(
        instance=facts.name, provider=facts.provider, region=facts.region, price_per_hour=price,
        backend=curve.backend, trial_id=trial.id, config=dict(curve.config), target=curve.target,
        batch_size=point.batch_size, source=facts.source, latency_ms=served.latency_ms,
        latency_ms_interval=served.interval_ms, slo_verdict=verdict.verdict, slo_margin_ms=verdict.margin_ms,
        meets_slo=verdict.meets, cost_per_million=cost, instances_needed=needed, monthly_cost=monthly,
        memory_needed_gib=memory_gib, throughput_per_s=served.throughput, notes=notes,
        recommendable=facts.not_recommendable is None, batch_basis=point.basis, batching_wait_ms=served.wait_ms,
        processing_ms=point.latency_ms, cost_per_million_interval=cost_interval,
        not_recommendable_reason=facts.not_recommendable, estimate_relation=facts.relation, batch_fit=batch_fit,
        role=curve.role, solo_check_agrees=solo.get("agrees"),
        sufficient_samples=trial.latency.sufficient(slo.percentile))


def _key(row: RankedRow) -> tuple:
    """Recommendable first, then meeting the SLO, then cheaper, then faster."""
    return (not row.recommendable, not row.meets_slo,
            row.cost_per_million if row.cost_per_million is not None else float("inf"), row.latency_ms)


def _better(a: RankedRow, b: RankedRow | None) -> bool:
    """For one instance: the better of two candidates' rows. Within a near-tie on cost the head-to-head's winner
    is kept (it was faster beyond noise; a cost difference that small is not)."""
    if b is None:
        return True
    if (a.recommendable, a.meets_slo) == (b.recommendable, b.meets_slo) and a.cost_per_million and \
            b.cost_per_million and abs(a.cost_per_million - b.cost_per_million) <= NEAR_TIE * b.cost_per_million \
            and {a.role, b.role} == {"winner", "baseline"}:
        return a.role == "winner"
    return _key(a) < _key(b)


def _portability(curve_backend: str, kind: str) -> str | None:
    """Why an estimate on another CPU is shown but never recommended: the backend declares its deployable form
    machine code for the CPU it was tuned on (TVM: -mcpu), which does not carry over to another microarchitecture."""
    if not portable_across_cpus(curve_backend) and kind not in ("same", "gpu_from_gpu"):
        return (f"the {curve_backend} build is compiled and tuned for the measured CPU; run advisor on this "
                "instance or a --cluster node of this type to tune and package it there")
    return None


def _memory(inputs: RankingInputs, curve: CandidateCurve, batch_size: int | None = None) -> float:
    """At the largest measured batch, or at `batch_size` when that is larger (a fitted batch beyond them)."""
    peak = max((t.peak_rss_mib or 0) for t in curve.by_batch.values())
    activations = max(inputs.info.bytes_moved - inputs.info.weight_bytes, 0)
    largest = max(max(curve.by_batch), batch_size or 0)
    return memory_needed_gib(inputs.info.weight_bytes, activations, largest, peak or None)


def _fits(instance: Instance, needed_gib: float) -> str | None:
    capacity = instance.gpu.memory_gib if instance.gpu else instance.memory_gib
    if needed_gib > capacity:
        where = "GPU memory" if instance.gpu else "memory"
        return f"needs {needed_gib:.1f} GiB, has {capacity:g} GiB of {where}"
    return None


def _pareto(rows: Sequence[RankedRow]) -> tuple[str, ...]:
    """Price against latency, among rows one can act on."""
    priced = sorted((r for r in rows if r.price_per_hour is not None and r.recommendable),
                    key=lambda r: (r.price_per_hour, r.latency_ms))
    frontier, best_latency = [], float("inf")
    for row in priced:
        if row.latency_ms < best_latency:
            frontier.append(row.instance)
            best_latency = row.latency_ms
    return tuple(frontier)


@dataclass
class _Context:
    """What every instance's rows are computed from."""

    inputs: RankingInputs
    curves: list[CandidateCurve]
    measured_targets: list[Target]
    hardware: dict[str, tuple[Hardware, str]]
    estimator: _Estimator
    batch_fits: dict[int, BatchCurve | None]
    run_to_run: RunToRun


def _context(inputs: RankingInputs) -> _Context:
    slo_batch = inputs.batch_size or 1
    run_to_run = run_to_run_factor(inputs.trials, inputs.slo.percentile)
    curves = [c for c in _curves(inputs.trials, run_to_run.factor) if slo_batch in c.by_batch]
    measured_targets = [t for t in inputs.targets if any(c.target == t.id for c in curves)]
    hardware = {t.id: target_hardware(t, inputs.catalog) for t in measured_targets}
    estimator = _Estimator(inputs, [(t, hardware[t.id][0]) for t in measured_targets])
    # a build compiled for one shape (TVM, TensorRT) serves only the batch sizes it was built and measured at
    batch_fits = {id(c): c.batch_curve(inputs.slo.percentile) if accepts_any_batch(c.backend) else None
                  for c in curves}
    return _Context(inputs, curves, measured_targets, hardware, estimator, batch_fits, run_to_run)


def _reference_hardware(ctx: _Context, target_id: str, precision: str) -> Hardware:
    """The measured target's figures for a candidate's precision (only a GPU's differ: peak_gflops)."""
    target = next(t for t in ctx.measured_targets if t.id == target_id)
    if precision == "fp32" or target.kind != "cuda":
        return ctx.hardware[target_id][0]
    return target_hardware(target, ctx.inputs.catalog, precision)[0]


def _instance_row(ctx: _Context, instance: Instance) -> tuple[RankedRow | None, dict | None, dict | None]:
    """The instance's best row, or why it has none: (row, excluded entry, not-measured entry)."""
    inputs = ctx.inputs
    matched = [t for t in ctx.measured_targets if matches(instance, t)]
    if matched:
        pool = [c for c in ctx.curves if c.target in {t.id for t in matched}]
        source = "measured"
    else:
        reference = ctx.estimator.reference_for(instance)
        if reference is not None and instance.gpu is not None and reference[0].kind != "cuda":
            # a GPU figure from CPU runs would be invented: listed, not priced, not ranked
            return None, None, {"instance": instance.name, "provider": instance.provider,
                                "price_per_hour": instance.price_per_hour, "reason": NOT_MEASURED_GPU}
        pool = [c for c in ctx.curves if reference and c.target == reference[0].id]
        source = "estimated"
    best: RankedRow | None = None
    memory_reason = None
    for curve in pool:
        memory = _memory(inputs, curve)
        memory_reason = _fits(instance, memory)
        if memory_reason:
            continue
        fit = ctx.batch_fits[id(curve)]
        figures = _with_fitted(curve.points(inputs.slo.percentile), fit, inputs,
                               lambda b: _fits(instance, _memory(inputs, curve, b)) is None)
        facts = _RowFacts(instance.name, instance.provider, instance.region, instance.price_per_hour, source)
        if source == "estimated":
            # the fitted points move to the instance with the same transfer as the measured ones
            trial = next(iter(curve.by_batch.values()))
            ref_hw = _reference_hardware(ctx, curve.target, str(trial.config.get("precision", "fp32")))
            moved = {b: ctx.estimator.figure(point, trial, ref_hw, instance) for b, point in figures.items()}
            figures = {b: point for b, (point, _) in moved.items()}
            kind = moved[inputs.batch_size or 1][1]
            facts = replace(facts, relation=kind, notes=(f"estimated from {curve.target} measurements "
                                                         f"({kind.replace('_', ' ')})",),
                            not_recommendable=_portability(curve.backend, kind))
        row = _row(inputs, facts, curve, figures, memory, fit)
        if _better(row, best):
            best = row
    if best is not None:
        return best, None, None
    return None, {"instance": instance.name,
                  "reason": memory_reason or "no measurement to base an estimate on"}, None


def _local_rows(ctx: _Context, attached: set[str]) -> list[RankedRow]:
    """A measured machine that matches no catalogue entry is still a measured row, priced only with --local-price."""
    inputs = ctx.inputs
    rows = []
    for target in ctx.measured_targets:
        if target.id in attached or target.instance is not None:
            continue
        best = None
        capacity = target.gpu.memory_gib if target.gpu is not None and target.kind == "cuda" else \
            target.cpu.memory_gib
        note = ("this machine; pass --local-price to price it",) if inputs.local_price_per_hour is None else \
            ("this machine",)
        facts = _RowFacts(f"local ({target.label})", "local", "-", inputs.local_price_per_hour, "measured", note)
        for curve in (c for c in ctx.curves if c.target == target.id):
            fit = ctx.batch_fits[id(curve)]
            figures = _with_fitted(curve.points(inputs.slo.percentile), fit, inputs,
                                   lambda b: not capacity or _memory(inputs, curve, b) <= capacity)
            row = _row(inputs, facts, curve, figures, _memory(inputs, curve), fit)
            if _better(row, best):
                best = row
        if best is not None:
            rows.append(best)
    return rows


def _recommend(rows: list[RankedRow]) -> tuple[RankedRow | None, list[RankedRow]]:
    """The recommendation and the rows (updated): the cheapest measured row meeting the SLO, unless an estimate is
    cheaper even at the pessimistic end of its cost interval; cheaper estimates that are not are flagged
    `verify_on_instance`. Near-ties on cost are noted."""
    usable = [r for r in rows if r.meets_slo and r.recommendable and r.cost_per_million is not None]
    measured = min((r for r in usable if r.source == "measured"), key=_key, default=None)
    estimated = min((r for r in usable if r.source == "estimated"), key=_key, default=None)
    recommendation = measured or estimated
    if measured is not None and estimated is not None:
        pessimistic = (estimated.cost_per_million_interval or (estimated.cost_per_million,) * 2)[1]
        if pessimistic < measured.cost_per_million:
            recommendation = estimated
    if recommendation is None:
        return None, rows
    updated = []
    for row in rows:
        if row is not recommendation and row.source == "estimated" and row in usable and \
                row.cost_per_million < recommendation.cost_per_million:
            row = replace(row, verify_on_instance=True,
                          notes=(*row.notes, "verify on this instance type: cheaper by the estimate, but not at the "
                                             "pessimistic end of its interval"))
        updated.append(row)
    tied = [r.instance for r in updated if r.instance != recommendation.instance and r.meets_slo and r.recommendable
            and r.cost_per_million is not None
            and r.cost_per_million <= recommendation.cost_per_million * (1 + NEAR_TIE)]
    rows = []
    for row in updated:
        if row.instance == recommendation.instance:
            row = recommendation = _with_note(row, f"near-tie with {', '.join(tied)}") if tied else row
        elif row.instance in tied:
            row = _with_note(row, f"near-tie with {recommendation.instance} (within {NEAR_TIE:.0%} on cost)")
        rows.append(row)
    return recommendation, rows


def _costmodel_summary(ctx: _Context) -> dict:
    return {"targets": {tid: {"figures": hw[1], "peak_gflops": hw[0].peak_gflops,
                              "bandwidth_gbs": hw[0].bandwidth_gbs, "cores": hw[0].cores,
                              "fit": max(ctx.estimator.fits_of(tid).values(), key=lambda f: f["observations"],
                                         default=None),
                              "fits": ctx.estimator.fits_of(tid)}
                        for tid, hw in ctx.hardware.items()},
            "cross_hardware_factors": dict(CROSS_HARDWARE_FACTOR),
            "run_to_run": ctx.run_to_run.to_dict(),
            "batch_fits": [{"backend": c.backend, "target": c.target, "config": dict(c.config),
                            "percentile": ctx.inputs.slo.percentile, **ctx.batch_fits[id(c)].to_dict()}
                           for c in ctx.curves if ctx.batch_fits[id(c)] is not None]}


def rank(inputs: RankingInputs) -> Ranking:
    ctx = _context(inputs)
    rows: list[RankedRow] = []
    excluded: list[dict] = []
    not_measured: list[dict] = []
    for instance in inputs.catalog.instances:
        row, excluded_entry, unmeasured = _instance_row(ctx, instance)
        rows += [row] if row else []
        excluded += [excluded_entry] if excluded_entry else []
        not_measured += [unmeasured] if unmeasured else []
    attached = {t.id for t in ctx.measured_targets for i in inputs.catalog.instances if matches(i, t)}
    rows += _local_rows(ctx, attached)
    recommendation, rows = _recommend(rows)
    rows.sort(key=lambda r: (r is not recommendation, *_key(r)))
    # how close the best came, among rows one could act on
    actionable = [r for r in rows if r.recommendable] or rows
    closest = None if recommendation else min(actionable, key=lambda r: r.latency_ms / inputs.slo.latency_ms,
                                              default=None)
    local = next((ctx.hardware[t.id][0] for t in ctx.measured_targets if t.id == "cpu"), None)
    local_peaks = {"peak_gflops": local.peak_gflops, "peak_bandwidth_gbs": local.bandwidth_gbs} if local else {}
    return Ranking(tuple(rows), tuple(excluded), _pareto(rows), recommendation, closest, _costmodel_summary(ctx),
                   local_peaks, tuple(not_measured))


def _with_note(row: RankedRow, note: str) -> RankedRow:
    return replace(row, notes=(*row.notes, note))
