"""Latency on hardware that was not measured: a per-operator-class roofline whose efficiency terms are learned.

For one inference of work W (the model analysis at a batch size) on hardware H with t intra-op threads:

    latency_ms = amdahl(t) * kernel_ms  +  per_node_ms * nodes  +  fixed_ms

    kernel_ms  = a_conv   * conv FLOPs   / per-core peak                    (compute-bound classes: by FLOPs)
               + a_matmul * matmul FLOPs / per-core peak                    (MatMul, Gemm, attention)
               + b        * bytes of the memory-bound classes / per-core bandwidth   (elementwise, norms, pools, ...)
    amdahl(t)  = (1 - p) + p / min(t, cores)                                (p: parallel fraction of the kernels)

FLOPs and bytes come from advisor.opcost (per node, summed per operator class, at batch 1) scaled by the batch
size; `nodes` counts the graph's operators, whose fixed dispatch cost dominates tiny models; per-core figures
are the machine's peak and bandwidth over its cores. a_conv, a_matmul and b are inverse efficiencies.

Fit (scikit-learn `LinearRegression(positive=True)`, i.e. non-negative least squares): on relative error
(sample weight 1 / latency^2), once per parallel fraction p on a grid; the p with the smallest error wins. When
the observations were profiled (ONNX Runtime's profiler, trial details `op_class_ms`), each profiled class group
adds a row of its own: its kernel time against its own term alone. That separates conv from matmul from memory
time, which total latencies cannot when they all grow with the batch together (one model's trials), and which
decides how an estimate moves between machines whose peak and bandwidth differ in different proportions.
Where neither can split it (no profile, one model), faint prior rows (PRIOR_COEFFICIENTS) pick the split.
Without two thread counts p cannot be learned: PRIOR_PARALLEL_FRACTION is used, the serial terms are left out
(at one thread count they cannot be told from batch-independent kernel time such as reading the weights; the
prior's 1 - p stands for them) and the band is widened by PRIOR_BAND_FACTOR. A learned p at an end of the grid
(0.0 or 1.0) is a bound rather than an estimate: the fit says so (a note, `parallel_fraction_at_edge` in
to_dict()) and widens its band by EDGE_BAND_FACTOR, as for the prior. With fewer than three observations the fit
falls back to one scale on the kernel terms, with the prior thread scaling.

An estimate for another instance is anchored on a real measurement of the same candidate:

    estimate(instance) = measured(reference) * model(instance, its threads) / model(reference, threads used)

and its interval is the measured interval x the fit's residual band (2.5-97.5 % of leave-one-out ratios of
measured to predicted) x a cross-hardware factor (docs/costmodel.md), because peak figures explain only part of
the difference between machines.

Percentiles. The model is fitted on medians (p50) only, and the ranking moves any percentile (the SLO's p90/p99
as well) with the same ratio model(instance) / model(reference). That ratio is a ratio of work rates, not a
latency: applying it to a tail figure assumes the tail is the same *relative* distance above the median on both
machines, i.e. that slow calls are the same kernels slowed by a factor (a neighbour's burst, a thread-pool
wake-up, frequency changes), which a faster machine shortens in proportion. That holds when the tail is a
multiple of the median and fails when it is additive: a slow call that waits for the 4 ms scheduler tick
(/work/shared/NOTES.md: with four ONNX Runtime sessions interleaved, a tiny CNN's p99 was 4.3 ms at a p50 of
0.14 ms) does not wait less on a machine with twice the peak, so a p99 moved to faster hardware is then
optimistic, and one moved to slower hardware pessimistic. What the tail depends on beyond that (the instance's
neighbours, its kernel's tick) is not in any figure the catalogue has, so there is nothing to fit a tail model
on; the measured interval of that percentile (its bootstrap, wider for p99 than for p50) and the cross-hardware
factor carry it. bench/costmodel_accuracy.py (also --fit-on/--predict, across machines) tests the ratio on
medians only.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# Multiplicative uncertainty of an estimate moved from a reference machine to another (interval = x / f .. x * f).
# Judgement, except "same_vendor", which is measured for one pair (docs/costmodel.md, "Cross-hardware error"):
# AMD Zen 4 <-> Zen 3 (2-vCPU VMs, bench/measurements/), both directions, three Zen 3 runs, each model's points fitted
# alone as the ranking fits one run: at 1.35 the interval held 71-88 % of the measured points; 95 % needs 1.44-1.59
# with the per-vCPU catalogue figures advisor.ranking used on 2026-12-02 (with per-core figures times the cores
# shown, as at edf3b02, it needs 1.37-2.37: the catalogue's peaks put a Zen 3 core level with a Zen 4 core, which
# ran these models ~1.45x faster). Widened to 1.6 (2026-12-02).
CROSS_HARDWARE_FACTOR = {
    "same": 1.15,  # same microarchitecture, different core count or memory
    "same_vendor": 1.6,  # same CPU vendor and ISA family, other generation (measured: see above)
    "same_arch": 1.6,  # both x86 (or both Arm), other vendor
    "other_arch": 2.0,  # x86 <-> Arm
    "gpu_from_gpu": 1.6,  # another GPU model
    "gpu_from_cpu": 4.0,  # no GPU measured at all
}
FLOP_PER_CYCLE_PER_CORE = (("avx512f", 64), ("avx2", 32), ("sve", 32), ("neon", 16))
ASSUMED_GHZ = 3.0
ASSUMED_BANDWIDTH_PER_CORE_GBS = 6.0

# Operator classes (advisor.opcost.op_class) behind each kernel term. Data movement (reshape, gather, ...) costs
# its dispatch in the per-node terms and no bytes (opcost counts a Gather's whole embedding table as moved);
# "other" (operators opcost does not know) has no work figures at all.
KERNEL_TERMS: dict[str, tuple[str, ...]] = {
    "conv": ("conv",),
    "matmul": ("matmul", "attention"),
    "memory": ("elementwise", "normalization", "pooling", "reduction"),
    "weights": (),  # reading the weights once per inference: weight bytes / per-core bandwidth, not batch-scaled
}
# Profiled kernel time per term. ONNX Runtime's fused kernels outside opcost's classes (FusedGemm above all) land
# in "other" and are counted as matmul time.
PROFILE_CLASSES: dict[str, tuple[str, ...]] = {
    "conv": ("conv",), "matmul": ("matmul", "attention", "other"),
    "memory": ("elementwise", "normalization", "pooling", "reduction"),
}
SERIAL_TERMS = ("per_node", "per_node_parallel", "fixed")  # ms per node; ms per node x (1 - 1/cores used); ms
TERMS = (*KERNEL_TERMS, *SERIAL_TERMS)
PARALLEL_GRID = np.linspace(0.0, 1.0, 41)
# Intra-op threads 2 vs 1 gave ~1.7x on the models tried (docs/NOTES): 1 / ((1 - p) + p / 2) = 1.7 -> p = 0.82.
PRIOR_PARALLEL_FRACTION = 0.82
# 2 threads vs 1 ran 1.4-2.0x on six of the seven bench models (an MLP whose weights fit two cores' caches: 3x):
# where the prior stands in for a learned p, the residual band is widened by this much (judgement).
PRIOR_BAND_FACTOR = 1.2
# A learned p at an end of PARALLEL_GRID (0.0: threads buy nothing; 1.0: perfect scaling) is a bound, not an
# estimate: the data may want a value beyond it (slower with more threads: contention; faster than Amdahl allows:
# caches that grow with the cores) or any value near it, and the leave-one-out band, computed at that p, does not
# see the uncertainty of p itself, which decides every estimate at another core count. The fit says so (notes,
# `parallel_fraction_at_edge`) and widens its band as it does for the prior p (judgement, the same size: at 8
# cores p = 1.0 and 0.95 differ by 1.35x; at the other end p = 0.0 and 0.25 by 1.3x).
EDGE_BAND_FACTOR = PRIOR_BAND_FACTOR
PROFILE_ROW_WEIGHT = 1.0  # a profiled class time counts as much as a total latency
# Where the data cannot split the time between kernel terms (one model, no profile: every term grows with the
# batch together), a faint pull towards these inverse efficiencies decides the split: the full fit of
# bench/costmodel_accuracy.py on 7 models (2026-12-01 12:04, Sapphire Rapids, docs/costmodel.md). Weight: a
# thousandth of an observation, so it never outweighs a measurement.
PRIOR_COEFFICIENTS = {"conv": 1.2, "matmul": 1.35, "memory": 0.075, "weights": 0.15}
PRIOR_ROW_WEIGHT = 1e-3


@dataclass(frozen=True)
class Hardware:
    """What the latency model needs to know about a machine (all of it, as allotted to the instance)."""

    peak_gflops: float
    bandwidth_gbs: float
    cores: int
    family: str  # "x86-intel", "x86-amd", "arm", "gpu"
    microarchitecture: str

    def parallel(self, threads: int) -> int:
        """Cores a run with `threads` intra-op threads keeps busy (0: all of them)."""
        return self.cores if threads <= 0 else max(1, min(threads, self.cores))


def derived_cpu_hardware(isa: tuple[str, ...], cores: int, vendor: str, microarchitecture: str) -> Hardware:
    """Figures for a CPU with no catalogue entry: FLOP/cycle from its ISA at an assumed clock."""
    per_cycle = next((flops for flag, flops in FLOP_PER_CYCLE_PER_CORE if flag in isa), 8)
    return Hardware(per_cycle * ASSUMED_GHZ * cores, ASSUMED_BANDWIDTH_PER_CORE_GBS * cores, cores,
                    family_of(vendor, gpu=False), microarchitecture)


def family_of(vendor: str, gpu: bool) -> str:
    if gpu:
        return "gpu"
    return {"intel": "x86-intel", "amd": "x86-amd", "arm": "arm"}.get(vendor, "other")


def relation(reference: Hardware, other: Hardware) -> str:
    if other.family == "gpu":
        return "gpu_from_gpu" if reference.family == "gpu" else "gpu_from_cpu"
    if reference.microarchitecture == other.microarchitecture:
        return "same"
    if reference.family == other.family:
        return "same_vendor"
    if reference.family.startswith("x86") and other.family.startswith("x86"):
        return "same_arch"
    return "other_arch"


@dataclass(frozen=True)
class Work:
    """What one inference asks of the machine: the model analysis at batch size 1, and the batch size."""

    flops_by_class: Mapping[str, float]
    bytes_by_class: Mapping[str, float]
    nodes_by_class: Mapping[str, int]
    weight_bytes: float = 0.0
    batch: int = 1

    @classmethod
    def of(cls, info, batch: int) -> Work:
        """From an advisor.model.ModelInfo at one batch size."""
        nodes = collections.Counter(cost.op_class for cost in info.node_costs)
        return cls(dict(info.flops_by_class), dict(info.bytes_by_class), dict(nodes), float(info.weight_bytes), batch)

    def flops(self, term: str) -> float:
        return sum(self.flops_by_class.get(c, 0) for c in KERNEL_TERMS[term]) * self.batch

    def memory_bytes(self) -> float:
        # activations of the memory-bound classes grow with the batch (their weights: biases, scales, are small)
        return sum(self.bytes_by_class.get(c, 0) for c in KERNEL_TERMS["memory"]) * self.batch

    def nodes(self) -> int:
        """Operators that run: data movement (reshape, constants, shape arithmetic) is mostly folded away."""
        return sum(n for c, n in self.nodes_by_class.items() if c != "data_movement")

    def to_dict(self) -> dict:
        return {"flops_by_class": dict(self.flops_by_class), "bytes_by_class": dict(self.bytes_by_class),
                "nodes_by_class": dict(self.nodes_by_class), "weight_bytes": self.weight_bytes, "batch": self.batch}

    @classmethod
    def from_dict(cls, data: Mapping) -> Work:
        return cls(dict(data["flops_by_class"]), dict(data["bytes_by_class"]), dict(data["nodes_by_class"]),
                   float(data.get("weight_bytes", 0.0)), int(data.get("batch", 1)))


@dataclass(frozen=True)
class Observation:
    """One measurement: the work, the threads it ran with (0: all cores), where, and its median latency."""

    work: Work
    threads: int
    hardware: Hardware
    latency_ms: float
    class_ms: Mapping[str, float] | None = None  # profiler kernel time per operator class, when recorded


def kernel_ms(work: Work, hardware: Hardware) -> dict[str, float]:
    """Each kernel term at 100 % efficiency on one core: FLOPs / per-core peak, bytes / per-core bandwidth."""
    per_core_gflops = hardware.peak_gflops / hardware.cores
    per_core_gbs = hardware.bandwidth_gbs / hardware.cores
    return {"conv": work.flops("conv") / (per_core_gflops * 1e6),
            "matmul": work.flops("matmul") / (per_core_gflops * 1e6),
            "memory": work.memory_bytes() / (per_core_gbs * 1e6),
            "weights": work.weight_bytes / (per_core_gbs * 1e6)}


def amdahl(parallel_fraction: float, cores_used: int) -> float:
    """Fraction of the single-thread kernel time left when `cores_used` cores share the parallel part."""
    return (1.0 - parallel_fraction) + parallel_fraction / cores_used


def _row(work: Work, threads: int, hardware: Hardware, parallel_fraction: float) -> np.ndarray:
    cores = hardware.parallel(threads)
    scale = amdahl(parallel_fraction, cores)
    kernels = kernel_ms(work, hardware)
    nodes = float(work.nodes())
    return np.array([*(scale * kernels[term] for term in KERNEL_TERMS), nodes, nodes * (1.0 - 1.0 / cores), 1.0])


def _design(observations: Sequence[Observation], parallel_fraction: float, serial: bool):
    """Rows of the regression: one per total latency, one per profiled kernel term, one faint prior row per kernel
    term (weights: relative). Without `serial` the serial terms' columns are zero, so their coefficients stay 0."""
    mask = np.array([serial or term not in SERIAL_TERMS for term in TERMS], dtype=float)
    rows, targets, weights, totals = [], [], [], []
    for obs in observations:
        row = _row(obs.work, obs.threads, obs.hardware, parallel_fraction) * mask
        rows.append(row)
        totals.append(row)
        targets.append(obs.latency_ms)
        weights.append(1.0 / obs.latency_ms ** 2)
        if not obs.class_ms:
            continue
        for term, classes in PROFILE_CLASSES.items():
            index = TERMS.index(term)
            measured = sum(obs.class_ms.get(c, 0.0) for c in classes)
            if row[index] > 0 and measured > 0:
                alone = np.zeros(len(TERMS))
                alone[index] = row[index]
                rows.append(alone)
                targets.append(measured)
                weights.append(PROFILE_ROW_WEIGHT / obs.latency_ms ** 2)
    typical = np.mean(totals, axis=0)  # the prior rows: each kernel term at its prior efficiency, typical size
    latency = float(np.mean([o.latency_ms for o in observations]))
    for term, prior in PRIOR_COEFFICIENTS.items():
        index = TERMS.index(term)
        if typical[index] > 0:
            alone = np.zeros(len(TERMS))
            alone[index] = typical[index]
            rows.append(alone)
            targets.append(prior * typical[index])
            weights.append(PRIOR_ROW_WEIGHT / latency ** 2)
    return np.array(rows), np.array(targets), np.array(weights)


def _solve(observations: Sequence[Observation], parallel_fraction: float,
           serial: bool = True) -> tuple[np.ndarray, float]:
    """Non-negative coefficients for one parallel fraction, and the relative squared error of the totals."""
    from sklearn.linear_model import LinearRegression

    x, y, w = _design(observations, parallel_fraction, serial)
    coef = LinearRegression(positive=True, fit_intercept=False).fit(x, y, sample_weight=w).coef_
    totals = np.array([_row(o.work, o.threads, o.hardware, parallel_fraction) for o in observations])
    measured = np.array([o.latency_ms for o in observations])
    return coef, float(np.sum(((totals @ coef) - measured) ** 2 / measured ** 2))


@dataclass(frozen=True)
class LatencyModel:
    coefficients: dict[str, float]  # TERMS -> fitted coefficient (kernel terms: inverse efficiency; else ms)
    parallel_fraction: float
    residual_band: tuple[float, float]  # (low, high) multiplicative band of measured / predicted, 95 %
    n: int
    method: str = "learned per-class roofline with Amdahl thread scaling (non-negative least squares)"
    profiled: int = 0  # observations that brought a per-class profile
    notes: tuple[str, ...] = field(default=())
    parallel_fraction_at_edge: bool = False  # learned p at 0.0 or 1.0, an end of PARALLEL_GRID (band widened)

    @classmethod
    def fit(cls, observations: Sequence[Observation]) -> LatencyModel:
        observations = list(observations)
        profiled = sum(1 for o in observations if o.class_ms)
        if len(observations) < 3:
            return cls._one_scale(observations, profiled)
        if len({o.hardware.parallel(o.threads) for o in observations}) > 1:
            fits = [(_solve(observations, p), p) for p in PARALLEL_GRID]
            (coef, _), parallel_fraction = min(fits, key=lambda fit: fit[0][1])
            serial, widen, notes = True, 1.0, ()
            at_edge = parallel_fraction in (PARALLEL_GRID[0], PARALLEL_GRID[-1])
            if at_edge:
                widen = EDGE_BAND_FACTOR
                beyond = ("scaling as good as Amdahl allows or better" if parallel_fraction == PARALLEL_GRID[-1]
                          else "no gain from more threads, or a loss")
                notes = (f"parallel fraction {parallel_fraction:g} at the edge of its grid "
                         f"({PARALLEL_GRID[0]:g}-{PARALLEL_GRID[-1]:g}: {beyond}); it is a bound, not an "
                         f"estimate: band widened x{EDGE_BAND_FACTOR}",)
        else:
            # serial time cannot be told from parallel time at one thread count: the prior's (1 - p) stands for it
            parallel_fraction, serial, widen, at_edge = PRIOR_PARALLEL_FRACTION, False, PRIOR_BAND_FACTOR, False
            coef, _ = _solve(observations, parallel_fraction, serial)
            note = (f"one thread count measured: parallel fraction {PRIOR_PARALLEL_FRACTION} assumed, band widened "
                    f"x{PRIOR_BAND_FACTOR}")
            notes = (note,)
        low, high = _loo_band(observations, parallel_fraction, serial)
        return cls(dict(zip(TERMS, map(float, coef))), float(parallel_fraction), (low / widen, high * widen),
                   len(observations), profiled=profiled, notes=notes, parallel_fraction_at_edge=bool(at_edge))

    @classmethod
    def _one_scale(cls, observations: list[Observation], profiled: int) -> LatencyModel:
        """Too few points to separate terms: every kernel term at one efficiency, the prior thread scaling."""
        unit = {term: 1.0 for term in KERNEL_TERMS} | {term: 0.0 for term in SERIAL_TERMS}
        prior = cls(unit, PRIOR_PARALLEL_FRACTION, (1.0, 1.0), len(observations))
        ratios = [o.latency_ms / max(prior.predict_ms(o.work, o.threads, o.hardware), 1e-12) for o in observations]
        scale = float(np.median(ratios)) if ratios else 1.0
        return cls({term: scale for term in KERNEL_TERMS} | {term: 0.0 for term in SERIAL_TERMS},
                   PRIOR_PARALLEL_FRACTION, (1.0, 1.0), len(observations), profiled=profiled,
                   notes=("too few observations: one efficiency on all kernel terms, prior thread scaling",))

    def predict_ms(self, work: Work, threads: int, hardware: Hardware) -> float:
        row = _row(work, threads, hardware, self.parallel_fraction)
        return float(row @ np.array([self.coefficients[t] for t in TERMS]))

    def ratio(self, work_from: Work, threads_from: int, hardware_from: Hardware, work_to: Work, threads_to: int,
              hardware_to: Hardware) -> float:
        """How much longer (>1) or shorter one run takes than another, by the model."""
        return self.predict_ms(work_to, threads_to, hardware_to) / max(
            self.predict_ms(work_from, threads_from, hardware_from), 1e-12)

    def to_dict(self) -> dict:
        return {"method": self.method, "coefficients": dict(self.coefficients),
                "parallel_fraction": self.parallel_fraction, "residual_band": list(self.residual_band),
                "parallel_fraction_at_edge": self.parallel_fraction_at_edge,
                "observations": self.n, "profiled_observations": self.profiled, "notes": list(self.notes)}


def _loo_band(observations: list[Observation], parallel_fraction: float, serial: bool) -> tuple[float, float]:
    """2.5-97.5 % of measured / predicted with each observation left out of the fit (at the chosen p)."""
    ratios = []
    for index, held in enumerate(observations):
        rest = observations[:index] + observations[index + 1:]
        coef, _ = _solve(rest, parallel_fraction, serial)
        predicted = float(_row(held.work, held.threads, held.hardware, parallel_fraction) @ coef)
        if predicted > 0:
            ratios.append(held.latency_ms / predicted)
    if not ratios:
        return 1.0, 1.0
    low, high = np.quantile(ratios, [0.025, 0.975])
    return min(float(low), 1.0), max(float(high), 1.0)


def transfer(measured_ms: float, interval: tuple[float, float], model: LatencyModel, work: Work,
             reference: Hardware, reference_threads: int, other: Hardware,
             other_threads: int = 0) -> tuple[float, tuple[float, float], str]:
    """Move a measurement from the reference machine to another: point estimate, interval, relation."""
    scale = model.ratio(work, reference_threads, reference, work, other_threads, other)
    kind = relation(reference, other)
    factor = CROSS_HARDWARE_FACTOR[kind]
    low = interval[0] * scale * model.residual_band[0] / factor
    high = interval[1] * scale * model.residual_band[1] * factor
    estimate = measured_ms * scale
    if other.family == "gpu":
        # a GPU pays a launch per kernel and a synchronisation per inference whatever its peak: no estimate scaled
        # from FLOPs alone may go below that (a CPU fit's serial terms, which would carry it, may be absent)
        floor = gpu_floor_ms(work)
        estimate, low, high = max(estimate, floor), max(low, floor / factor), max(high, floor * factor)
    return estimate, (low, high), kind


GPU_LAUNCH_MS = 0.005  # per kernel launched (CUDA launch latency, a few microseconds)
GPU_SYNC_MS = 0.02  # per inference: stream synchronisation and the framework's own dispatch


def gpu_floor_ms(work: Work) -> float:
    """The least one inference can take on any GPU: a kernel launch per operator that runs, and one sync."""
    return GPU_SYNC_MS + GPU_LAUNCH_MS * max(1, work.nodes())
