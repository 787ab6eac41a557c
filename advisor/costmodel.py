"""Latency on hardware that was not measured: a roofline whose efficiency terms are learned from measurements.

    latency_ms = a * compute_ms + b * memory_ms + c
    compute_ms = FLOPs / (peak FLOP/s available to the run),  memory_ms = bytes moved / (memory bandwidth)

a and b (inverse efficiencies) and c (fixed overhead) are fitted with scikit-learn (non-negative least squares)
over every measurement of a reference target: different thread counts change the available peak and different
batch sizes change FLOPs and bytes, so the fit sees the model's compute- and memory-bound behaviour. An estimate
for another instance is anchored on a real measurement:

    estimate(instance) = measured(reference) * model(instance figures) / model(reference figures)

and its interval combines the fit's bootstrap residual spread with a cross-hardware factor (judgement, not
learned: documented in docs/costmodel.md), because peak figures explain only part of the difference between
machines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Multiplicative uncertainty of an estimate moved from a reference machine to another (interval = x / f .. x * f).
CROSS_HARDWARE_FACTOR = {
    "same": 1.15,  # same microarchitecture, different core count or memory
    "same_vendor": 1.35,  # same CPU vendor and ISA family, other generation
    "same_arch": 1.6,  # both x86 (or both Arm), other vendor
    "other_arch": 2.0,  # x86 <-> Arm
    "gpu_from_gpu": 1.6,  # another GPU model
    "gpu_from_cpu": 4.0,  # no GPU measured at all
}
FLOP_PER_CYCLE_PER_CORE = (("avx512f", 64), ("avx2", 32), ("sve", 32), ("neon", 16))
ASSUMED_GHZ = 3.0
ASSUMED_BANDWIDTH_PER_CORE_GBS = 6.0


@dataclass(frozen=True)
class Hardware:
    """What the latency model needs to know about a machine (all of it, as allotted to the instance)."""

    peak_gflops: float
    bandwidth_gbs: float
    cores: int
    family: str  # "x86-intel", "x86-amd", "arm", "gpu"
    microarchitecture: str

    def available_gflops(self, threads: int) -> float:
        """Peak available to a run using `threads` cores (0: all)."""
        used = self.cores if threads <= 0 else min(threads, self.cores)
        return self.peak_gflops * used / self.cores


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
class Observation:
    flops: float
    bytes: float
    gflops_available: float
    bandwidth_gbs: float
    latency_ms: float


def _features(flops, nbytes, gflops, bandwidth) -> np.ndarray:
    compute_ms = np.asarray(flops, dtype=float) / (np.asarray(gflops, dtype=float) * 1e9) * 1e3
    memory_ms = np.asarray(nbytes, dtype=float) / (np.asarray(bandwidth, dtype=float) * 1e9) * 1e3
    return np.column_stack([compute_ms, memory_ms])


@dataclass(frozen=True)
class RooflineModel:
    compute_coef: float  # 1 / compute efficiency
    memory_coef: float  # 1 / bandwidth efficiency
    overhead_ms: float
    residual_band: tuple[float, float]  # (low, high) multiplicative band of measured / fitted, 95 %
    n: int

    @classmethod
    def fit(cls, observations: list[Observation], seed: int = 0) -> RooflineModel:
        from sklearn.linear_model import LinearRegression

        x = _features([o.flops for o in observations], [o.bytes for o in observations],
                      [o.gflops_available for o in observations], [o.bandwidth_gbs for o in observations])
        y = np.array([o.latency_ms for o in observations])
        if len(observations) < 3 or np.allclose(x[:, 0], x[0, 0]):
            # too few distinct points to separate the terms: one efficiency on the compute roofline
            scale = float(np.median(y / np.maximum(x[:, 0] + x[:, 1], 1e-12)))
            return cls(scale, 0.0, 0.0, (1.0, 1.0), len(observations))
        regression = LinearRegression(positive=True).fit(x, y)
        fitted = np.maximum(regression.predict(x), 1e-9)
        ratios = y / fitted
        rng = np.random.default_rng(seed)
        boot = rng.choice(ratios, size=(500, ratios.size), replace=True)
        band = (float(np.quantile(boot.min(axis=1), 0.5)), float(np.quantile(boot.max(axis=1), 0.5)))
        return cls(float(regression.coef_[0]), float(regression.coef_[1]), float(max(regression.intercept_, 0.0)),
                   (min(band[0], 1.0), max(band[1], 1.0)), len(observations))

    def predict_ms(self, flops: float, nbytes: float, gflops: float, bandwidth: float) -> float:
        compute, memory = _features([flops], [nbytes], [gflops], [bandwidth])[0]
        return self.compute_coef * compute + self.memory_coef * memory + self.overhead_ms

    def to_dict(self) -> dict:
        return {"method": "learned roofline (non-negative least squares)", "compute_coef": self.compute_coef,
                "memory_coef": self.memory_coef, "overhead_ms": self.overhead_ms,
                "residual_band": list(self.residual_band), "observations": self.n}


def transfer(measured_ms: float, interval: tuple[float, float], model: RooflineModel, flops: float, nbytes: float,
             reference: Hardware, reference_threads: int, other: Hardware) -> tuple[float, tuple[float, float], str]:
    """Move a measurement from the reference machine to another: point estimate, interval, relation."""
    at_reference = model.predict_ms(flops, nbytes, reference.available_gflops(reference_threads),
                                    reference.bandwidth_gbs)
    at_other = model.predict_ms(flops, nbytes, other.peak_gflops, other.bandwidth_gbs)
    scale = at_other / max(at_reference, 1e-12)
    kind = relation(reference, other)
    factor = CROSS_HARDWARE_FACTOR[kind]
    low = interval[0] * scale * model.residual_band[0] / factor
    high = interval[1] * scale * model.residual_band[1] * factor
    return measured_ms * scale, (low, high), kind
