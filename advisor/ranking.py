"""Ranking catalogue instances by cost per million inferences among those meeting the SLO.

Every row is `measured` (the instance's hardware was measured: this machine or a cluster node of that type) or
`estimated` (advisor.costmodel, anchored on the nearest measured hardware), always with an interval.
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

NEAR_TIE = 0.05  # rows within 5 % of the winner's cost are shown as ties


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
    batch_size: int
    source: str  # measured | estimated
    latency_ms: float
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
    recommendable: bool = True  # False for figures too indirect to act on (a GPU estimated from CPU runs)
    batch_basis: str = "measured"  # how batch_size's figures were obtained: measured | interpolated | extrapolated

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["latency_ms_interval"] = list(self.latency_ms_interval)
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

    def to_dict(self) -> dict:
        return {"rows": [r.to_dict() for r in self.rows], "excluded": list(self.excluded),
                "pareto": list(self.pareto),
                "recommendation": self.recommendation.to_dict() if self.recommendation else None,
                "closest_miss": self.closest_miss.to_dict() if self.closest_miss else None,
                "costmodel": self.costmodel}


@dataclass
class CandidateCurve:
    """One backend configuration measured on one target, at one or more batch sizes."""

    backend: str
    target: str
    config: dict
    by_batch: dict[int, Trial]

    def threads(self) -> int:
        return int(self.config.get("intra_op_threads", 0) or 0)

    def points(self, percentile: str) -> dict[int, BatchPoint]:
        return {b: _measured_figure(t, percentile) for b, t in self.by_batch.items()}

    def batch_curve(self, percentile: str) -> BatchCurve | None:
        """The latency-vs-batch fit on this candidate's measured sizes (None when measured at one size)."""
        return BatchCurve.fit(list(self.points(percentile).values()))


def _curves(trials: Sequence[Trial]) -> list[CandidateCurve]:
    """Group ok trials by (backend, target, config); head-to-head measurements win over search ones."""
    rank = {"confirm": 0, "sweep": 1, "search": 2}
    curves: dict[str, CandidateCurve] = {}
    for trial in sorted((t for t in trials if t.ok), key=lambda t: rank.get(t.phase, 3)):
        key = json.dumps([trial.backend, trial.target, dict(trial.config)], sort_keys=True)
        curve = curves.setdefault(key, CandidateCurve(trial.backend, trial.target, dict(trial.config), {}))
        curve.by_batch.setdefault(trial.batch_size, trial)
    return list(curves.values())


def instance_hardware(instance: Instance) -> Hardware:
    cores = instance.gpu.count if instance.gpu else instance.cpu.physical_cores
    return Hardware(instance.peak.fp32_gflops, instance.peak.bandwidth_gbs, cores,
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


def target_hardware(target: Target, catalog: Catalog) -> tuple[Hardware, str]:
    """The measured machine's figures: a matching catalogue entry's per-core figures times the cores this machine
    shows (a VM may show its vCPUs as cores where the instance type counts SMT siblings), else derived from its ISA.
    """
    match = next((i for i in catalog.instances if matches(i, target)), None)
    if match is not None:
        listed = instance_hardware(match)
        if target.kind == "cuda" or target.cpu.physical_cores == listed.cores:
            return listed, f"catalogue entry {match.name}"
        cores = target.cpu.physical_cores
        return (Hardware(listed.peak_gflops / listed.cores * cores, listed.bandwidth_gbs / listed.cores * cores,
                         cores, listed.family, listed.microarchitecture),
                f"catalogue entry {match.name}, per-core figures x {cores} cores")
    if target.kind == "cuda":
        return Hardware(10_000.0, 500.0, 1, "gpu", target.gpu.name if target.gpu else "gpu"), "assumed GPU figures"
    cpu = target.cpu
    return derived_cpu_hardware(cpu.isa, cpu.physical_cores, cpu.vendor, cpu.microarchitecture), \
        f"derived from ISA at {3.0:g} GHz"


def _measured_figure(trial: Trial, percentile: str) -> BatchPoint:
    return BatchPoint(trial.batch_size, trial.latency.at(percentile), tuple(trial.latency.intervals[percentile]),
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
                if trial.ok and trial.target == target.id and trial.config.get("precision", "fp32") == "fp32":
                    threads = int(trial.config.get("intra_op_threads", 0) or 0)
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
        threads = int(trial.config.get("intra_op_threads", 0) or 0)
        other = instance_hardware(instance)
        latency, interval, kind = transfer(point.latency_ms, point.interval_ms, model, work, reference, threads,
                                           other, threads)
        mean, _, _ = transfer(point.mean_ms, (point.mean_ms, point.mean_ms), model, work, reference, threads, other,
                              threads)
        return replace(point, latency_ms=latency, interval_ms=interval, mean_ms=mean), kind

    def fits_of(self, target_id: str) -> dict[str, dict]:
        return {backend: m.to_dict() for (t, backend), m in self.models.items() if t == target_id}


def _row(inputs: RankingInputs, name: str, provider: str, region: str, price: float | None, curve: CandidateCurve,
         figures: dict[int, BatchPoint], source: str, notes: tuple[str, ...], memory_gib: float | None,
         fit: BatchCurve | None = None) -> RankedRow:
    slo = inputs.slo
    slo_batch = inputs.batch_size or 1
    judged = figures[slo_batch]
    verdict = judge(slo, judged.latency_ms, judged.interval_ms)
    # the cheapest way to serve: the largest batch whose latency (plus the wait to fill it) still meets the SLO
    best, best_throughput = judged, throughput_per_s(slo_batch, judged.mean_ms)
    for batch, figure in sorted(figures.items()):
        if inputs.batch_size is not None and batch != inputs.batch_size:
            continue
        if figure.interval_ms[1] + batching_window_ms(batch, inputs.qps) <= slo.latency_ms:
            throughput = throughput_per_s(batch, figure.mean_ms)
            if throughput > best_throughput:
                best, best_throughput = figure, throughput
    best_batch = best.batch_size
    if best.basis != "measured" and fit is not None:
        beyond = (f" (cap {fit.max_batch_size}: {EXTRAPOLATION_CAP}x the largest measured)"
                  if best.basis == "extrapolated" else "")
        notes = (*notes, f"batch {best_batch} {best.basis}{beyond}: {fit.describe()}")
        memory_gib = _memory(inputs, curve, best_batch)
    cost = cost_per_million(price, best_throughput) if price else None
    needed = instances_needed(inputs.qps, best_throughput, inputs.utilisation) if inputs.qps else None
    monthly = monthly_cost(needed, price) if needed and price else None
    trial = curve.by_batch[slo_batch]
    if source == "estimated" and verdict.verdict != "misses" and judged.interval_ms[1] > slo.latency_ms:
        notes = (*notes, "verify on the instance: the estimate's interval crosses the SLO")
    return RankedRow(
        instance=name, provider=provider, region=region, price_per_hour=price, backend=curve.backend,
        trial_id=trial.id, config=dict(curve.config), target=curve.target, batch_size=best_batch, source=source,
        latency_ms=judged.latency_ms, latency_ms_interval=judged.interval_ms, slo_verdict=verdict.verdict,
        slo_margin_ms=verdict.margin_ms, meets_slo=verdict.meets, cost_per_million=cost, instances_needed=needed,
        monthly_cost=monthly, memory_needed_gib=memory_gib, throughput_per_s=best_throughput, notes=notes,
        batch_basis=best.basis)


def _better(a: RankedRow, b: RankedRow | None) -> bool:
    """Recommendable first, then meeting the SLO, then cheaper, then faster."""
    if b is None:
        return True
    key = lambda r: (not r.recommendable, not r.meets_slo,  # noqa: E731
                     r.cost_per_million if r.cost_per_million is not None else float("inf"), r.latency_ms)
    return key(a) < key(b)


# Backends whose deployable form is machine code for the CPU it was tuned on (TVM: -mcpu): their artifact does
# not carry over to another microarchitecture, so such an estimate is shown but never recommended.
CPU_SPECIFIC_BACKENDS = ("tvm",)


def _portability_note(curve_backend: str, kind: str) -> str | None:
    if curve_backend in CPU_SPECIFIC_BACKENDS and kind not in ("same", "gpu_from_gpu", "gpu_from_cpu"):
        return (f"not recommendable: the {curve_backend} build is compiled and tuned for the measured CPU; run "
                "advisor on this instance or a --cluster node of this type to tune and package it there")
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


def _pareto(rows: list[RankedRow]) -> tuple[str, ...]:
    priced = sorted((r for r in rows if r.price_per_hour is not None), key=lambda r: (r.price_per_hour, r.latency_ms))
    frontier, best_latency = [], float("inf")
    for row in priced:
        if row.latency_ms < best_latency:
            frontier.append(row.instance)
            best_latency = row.latency_ms
    return tuple(frontier)


def rank(inputs: RankingInputs) -> Ranking:
    curves = _curves(inputs.trials)
    slo_batch = inputs.batch_size or 1
    curves = [c for c in curves if slo_batch in c.by_batch]
    measured_targets = [t for t in inputs.targets if any(c.target == t.id for c in curves)]
    hardware = {t.id: target_hardware(t, inputs.catalog) for t in measured_targets}
    estimator = _Estimator(inputs, [(t, hardware[t.id][0]) for t in measured_targets])
    from tuners.registry import accepts_any_batch  # here: a malformed ADVISOR_TUNERS must not break the import

    # a build compiled for one shape (TVM, TensorRT) serves only the batch sizes it was built and measured at
    batch_fits = {id(c): c.batch_curve(inputs.slo.percentile) if accepts_any_batch(c.backend) else None
                  for c in curves}
    rows: list[RankedRow] = []
    excluded: list[dict] = []
    attached: set[str] = set()
    for instance in inputs.catalog.instances:
        matched = [t for t in measured_targets if matches(instance, t)]
        best: RankedRow | None = None
        memory_reason = None
        if matched:
            attached.update(t.id for t in matched)
            pool = [c for c in curves if c.target in {t.id for t in matched}]
            source = "measured"
        else:
            reference = estimator.reference_for(instance)
            pool = [c for c in curves if reference and c.target == reference[0].id]
            source = "estimated"
        for curve in pool:
            kind = "measured"
            memory = _memory(inputs, curve)
            memory_reason = _fits(instance, memory)
            if memory_reason:
                continue
            notes: tuple[str, ...] = ()
            fit = batch_fits[id(curve)]
            figures = _with_fitted(curve.points(inputs.slo.percentile), fit, inputs,
                                   lambda b: _fits(instance, _memory(inputs, curve, b)) is None)
            if source == "estimated":
                # the fitted points move to the instance with the same transfer as the measured ones
                ref_hw, trial = hardware[curve.target][0], next(iter(curve.by_batch.values()))
                moved = {b: estimator.figure(point, trial, ref_hw, instance) for b, point in figures.items()}
                figures = {b: point for b, (point, _) in moved.items()}
                kind = moved[slo_batch][1]
                notes = (f"estimated from {curve.target} measurements ({kind.replace('_', ' ')})",)
                if kind == "gpu_from_cpu":
                    notes = (*notes, "not recommendable: no GPU was measured; run advisor on a GPU host or a "
                                     "--cluster node of this type")
            portability = _portability_note(curve.backend, kind) if source == "estimated" else None
            if portability:
                notes = (*notes, portability)
            row = _row(inputs, instance.name, instance.provider, instance.region, instance.price_per_hour, curve,
                       figures, source, notes, memory, fit)
            if source == "estimated" and (kind == "gpu_from_cpu" or portability):
                row = replace(row, recommendable=False)
            if _better(row, best):
                best = row
        if best is not None:
            rows.append(best)
        elif memory_reason:
            excluded.append({"instance": instance.name, "reason": memory_reason})
        else:
            excluded.append({"instance": instance.name, "reason": "no measurement to base an estimate on"})
    for target in measured_targets:
        if target.id in attached or target.instance is not None:
            continue
        # this machine matches no catalogue entry: it is still a measured row, priced only with --local-price
        best = None
        for curve in (c for c in curves if c.target == target.id):
            capacity = target.gpu.memory_gib if target.gpu is not None and target.kind == "cuda" else \
                target.cpu.memory_gib
            figures = _with_fitted(curve.points(inputs.slo.percentile), batch_fits[id(curve)], inputs,
                                   lambda b: not capacity or _memory(inputs, curve, b) <= capacity)
            row = _row(inputs, f"local ({target.label})", "local", "-", inputs.local_price_per_hour, curve, figures,
                       "measured", ("this machine; pass --local-price to price it",) if
                       inputs.local_price_per_hour is None else ("this machine",), _memory(inputs, curve),
                       batch_fits[id(curve)])
            if _better(row, best):
                best = row
        if best is not None:
            rows.append(best)
    rows.sort(key=lambda r: (not r.meets_slo, r.cost_per_million if r.cost_per_million is not None else float("inf"),
                             r.latency_ms))
    recommendation = next((r for r in rows if r.meets_slo and r.recommendable and r.cost_per_million is not None),
                          None)
    if recommendation is not None and recommendation.source == "estimated":
        # within a near-tie, a measured figure beats an estimate: prefer what was actually seen to run
        measured = next((r for r in rows if r.meets_slo and r.source == "measured" and r.cost_per_million is not None
                         and r.cost_per_million <= recommendation.cost_per_million * (1 + NEAR_TIE)), None)
        if measured is not None:
            rows.remove(measured)
            rows.insert(0, measured)
            recommendation = measured
    if recommendation is not None:
        tied = [r.instance for r in rows if r is not recommendation and r.meets_slo and r.recommendable
                and r.cost_per_million is not None
                and r.cost_per_million <= recommendation.cost_per_million * (1 + NEAR_TIE)]
        if tied:
            noted = _with_note(recommendation, f"near-tie with {', '.join(tied)}")
            rows = [noted if r is recommendation else
                    _with_note(r, f"near-tie with {recommendation.instance} (within {NEAR_TIE:.0%} on cost)")
                    if r.instance in tied else r for r in rows]
            recommendation = noted
    # how close the best came, among rows one could act on: a GPU figure estimated from CPU runs is no near-miss
    actionable = [r for r in rows if r.recommendable] or rows
    closest = None if recommendation else min(actionable, key=lambda r: r.latency_ms / inputs.slo.latency_ms,
                                              default=None)
    costmodel = {"targets": {tid: {"figures": hw[1], "peak_gflops": hw[0].peak_gflops,
                                   "bandwidth_gbs": hw[0].bandwidth_gbs, "cores": hw[0].cores,
                                   "fit": max(estimator.fits_of(tid).values(), key=lambda f: f["observations"],
                                              default=None),
                                   "fits": estimator.fits_of(tid)}
                             for tid, hw in hardware.items()},
                 "cross_hardware_factors": dict(CROSS_HARDWARE_FACTOR),
                 "batch_fits": [{"backend": c.backend, "target": c.target, "config": dict(c.config),
                                 "percentile": inputs.slo.percentile, **batch_fits[id(c)].to_dict()}
                                for c in curves if batch_fits[id(c)] is not None]}
    local = next((hardware[t.id][0] for t in measured_targets if t.id == "cpu"), None)
    local_peaks = {"peak_gflops": local.peak_gflops, "peak_bandwidth_gbs": local.bandwidth_gbs} if local else {}
    return Ranking(tuple(rows), tuple(excluded), _pareto(rows), recommendation, closest, costmodel, local_peaks)


def _with_note(row: RankedRow, note: str) -> RankedRow:
    return replace(row, notes=(*row.notes, note))
