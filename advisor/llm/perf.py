"""The time of one continuous-batching engine step on N tensor-parallel devices: a roofline per step.

One step of an engine with chunked prefill (vLLM's V1 scheduler) runs `p` new prompt tokens (chunks of one or more
prompts, each token attending to `c` tokens on average) and one new token for each of `d` running sequences whose
attended contexts total `C` tokens. For the whole model (ModelWork) split over n devices (Device.count):

    tokens       = p + d
    flops        = linear_flops_per_token * tokens + attention_flops_per_token_context * (p * c + C)
    weight bytes = weight_bytes                                        (dense: every weight read once per step)
                 = min(weight_bytes, active_weight_bytes * tokens)     (MoE, see below)
    kv bytes     = kv_bytes_per_token * (C + c + tokens)               (decode contexts read, the prefill's context
                                                                        read once, every new token's K and V written)
    compute_ms   = flops / n / (peak_tflops * 1e12 * e_compute)
    memory_ms    = (weight bytes + kv bytes) / n / (memory_bandwidth_gbs * 1e9 * e_bandwidth)
    comm_ms      = 2 * layers * allreduce(tokens * hidden_size * activation_bytes)        (n > 1 only)
    step_ms      = max(compute_ms, memory_ms) + comm_ms + step_overhead_ms

Roofline: a step is bound by whichever of compute and memory traffic takes longer (Williams, Waterman & Patterson,
"Roofline: an insightful visual performance model for multicore architectures", CACM 52(4), 2009). Decode steps of a
few sequences read every weight for a handful of tokens and are memory-bound; prefill chunks of thousands of tokens
are compute-bound. The attention term is the causal QK^T and AV products: 2 matmuls x 2 FLOPs x heads x head_dim per
layer per (query, attended token) pair = 4 x layers x heads x head_dim per attended token.

Tensor parallelism (Megatron-LM: Shoeybi et al., arXiv:1909.08053, section 3) splits every matmul over the n devices
and all-reduces the activations twice per layer (after attention and after the MLP): tokens x hidden x activation
bytes each. A ring all-reduce of S bytes over n devices costs (Thakur, Rabenseifner & Gropp, "Optimization of
Collective Communication Operations in MPICH", IJHPCA 19(1), 2005, reduce-scatter + all-gather; NCCL's "bus
bandwidth" uses the same 2 (n-1)/n factor: github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md):

    allreduce(S) = 2 (n-1) * alpha  +  2 (n-1)/n * S / (interconnect_gbs * 1e9 * e_interconnect)

alpha is the per-step latency of the link kind (priors.json `allreduce_step_latency_us`, stated assumptions). Work is
assumed to split evenly (KV heads too; with fewer KV heads than devices vLLM replicates them, which this ignores).

MoE: the brief's ModelWork gives only the total and the per-token (active) weight bytes, not how much of each is
shared (attention, embeddings) and how much is experts. A step then reads at most all weights and at most
`tokens x active` bytes: min(weight_bytes, active_weight_bytes x tokens). That counts the shared weights once per
token, so it overstates the bytes of small MoE batches (pessimistic for latency) and is exact for dense models and
for batches that touch every expert.

The efficiency factors (Efficiency) are fractions of the datasheet peaks that the engine reaches, plus a fixed
per-step overhead (scheduling, kernel launches, sampling). They are either fitted on measured step times of the
device (`fit_efficiency`: non-negative least squares on relative error) or priors reduced from published
measurements (`prior_efficiency`, priors.json; docs/llm.md "Sources"). `relative_interval` is the multiplicative
band that a predicted time carries.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from advisor.llm.architecture import LlmArchitecture
    from advisor.llm.precision import Precision

PRIORS_PATH = Path(__file__).with_name("priors.json")
INTERCONNECT_KINDS = ("nvswitch", "nvlink", "pcie")


class PerfError(ValueError):
    """A performance-model input a user (or a catalogue) can fix; the message is one line."""


@dataclass(frozen=True)
class ModelWork:
    """What one token costs, for the whole model before any tensor-parallel split."""

    linear_flops_per_token: float  # 2 x active multiplying params (incl. lm_head)
    attention_flops_per_token_context: float  # 4 x layers x heads x head_dim; x attended tokens = attention FLOPs
    weight_bytes: float  # all weights at the chosen precision (read once per step)
    active_weight_bytes: float  # MoE: the experts a token uses (= weight_bytes for dense)
    kv_bytes_per_token: float  # K and V, all layers, at the KV dtype
    layers: int
    hidden_size: int
    activation_bytes: int  # for the TP all-reduces (2 per layer)

    def __post_init__(self):
        for name in ("linear_flops_per_token", "weight_bytes", "active_weight_bytes"):
            if not getattr(self, name) > 0:
                raise PerfError(f"ModelWork.{name} must be positive, got {getattr(self, name)}")
        for name in ("attention_flops_per_token_context", "kv_bytes_per_token"):
            if getattr(self, name) < 0:
                raise PerfError(f"ModelWork.{name} must not be negative, got {getattr(self, name)}")
        if self.active_weight_bytes > self.weight_bytes:
            raise PerfError(f"ModelWork.active_weight_bytes ({self.active_weight_bytes:.3g}) exceeds weight_bytes "
                            f"({self.weight_bytes:.3g})")
        if self.layers < 1 or self.hidden_size < 1 or self.activation_bytes < 1:
            raise PerfError("ModelWork.layers, hidden_size and activation_bytes must be at least 1")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def model_work(arch: LlmArchitecture, precision: Precision, kv_dtype: str) -> ModelWork:
    """What one token of `arch` costs at `precision` with its KV cache in `kv_dtype` (the planner, the local
    measurement, bench-serve records and bench/gpu_llm_calibration.py all describe their model with it)."""
    return ModelWork(linear_flops_per_token=arch.linear_flops_per_token(),
                     attention_flops_per_token_context=4.0 * arch.num_layers * arch.num_attention_heads * arch.head_dim,
                     weight_bytes=arch.weight_bytes(precision),
                     active_weight_bytes=arch.active_weight_bytes(precision),
                     kv_bytes_per_token=float(arch.kv_bytes_per_token(kv_dtype)), layers=arch.num_layers,
                     hidden_size=arch.hidden_size, activation_bytes=2)


@dataclass(frozen=True)
class Device:
    """One tensor-parallel group: `count` identical devices, figures per device."""

    name: str
    count: int  # tensor-parallel degree used
    peak_tflops: float  # per device, at the compute dtype of the precision
    memory_bandwidth_gbs: float  # per device
    interconnect_gbs: float | None  # per device, one direction (None: single device)
    interconnect_kind: str | None  # nvswitch | nvlink | pcie

    def __post_init__(self):
        if self.count < 1:
            raise PerfError(f"{self.name}: the tensor-parallel degree must be at least 1, got {self.count}")
        if not self.peak_tflops > 0 or not self.memory_bandwidth_gbs > 0:
            raise PerfError(f"{self.name}: peak_tflops and memory_bandwidth_gbs must be positive, got "
                            f"{self.peak_tflops} and {self.memory_bandwidth_gbs}")
        if self.interconnect_gbs is not None and not self.interconnect_gbs > 0:
            raise PerfError(f"{self.name}: interconnect_gbs must be positive, got {self.interconnect_gbs}")
        if self.interconnect_kind is not None and self.interconnect_kind not in INTERCONNECT_KINDS:
            raise PerfError(f"{self.name}: interconnect_kind must be one of {', '.join(INTERCONNECT_KINDS)}, got "
                            f"{self.interconnect_kind!r}")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the datasheet peaks an engine reaches, a fixed per-step overhead, and the band on predictions."""

    compute: float
    bandwidth: float
    interconnect: float
    step_overhead_ms: float
    relative_interval: tuple[float, float]  # multiplicative band on predicted times, e.g. (0.8, 1.35)
    source: str  # "prior: <what>" | "fitted on N measurements of <GPU/engine>"

    def __post_init__(self):
        for name in ("compute", "bandwidth", "interconnect"):
            value = getattr(self, name)
            if not 0 < value <= 1.5:  # above 1 only as fitting slack: a datasheet peak is an upper bound
                raise PerfError(f"efficiency {name} must be in (0, 1.5], got {value}")
        if self.step_overhead_ms < 0:
            raise PerfError(f"step_overhead_ms must not be negative, got {self.step_overhead_ms}")
        lo, hi = self.relative_interval
        if not 0 < lo <= 1 <= hi:
            raise PerfError(f"relative_interval must hold 1 (lo <= 1 <= hi), got {self.relative_interval}")

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["relative_interval"] = list(self.relative_interval)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Efficiency:
        """A stored fit (to_dict's output) read back."""
        return cls(float(data["compute"]), float(data["bandwidth"]), float(data["interconnect"]),
                   float(data["step_overhead_ms"]), tuple(data["relative_interval"]), str(data["source"]))


@dataclass(frozen=True)
class StepPoint:
    """One measured engine step (e.g. from vLLM's per-step logs or a profiler) for `fit_efficiency`."""

    prefill_tokens: int
    prefill_context: float
    decode_sequences: int
    decode_context_tokens: int
    measured_ms: float


class StepModel:
    """Per-step time of one engine replica (module docstring for the formula)."""

    def __init__(self, work: ModelWork, device: Device, efficiency: Efficiency):
        self.work = work
        self.device = device
        self.efficiency = efficiency
        self.notes: list[str] = []
        n = device.count
        priors = load_priors()
        # per-device denominators, folded once: step_ms runs a few hundred thousand times per simulation
        self._ms_per_flop = 1e3 / (n * device.peak_tflops * 1e12 * efficiency.compute)
        self._ms_per_byte = 1e3 / (n * device.memory_bandwidth_gbs * 1e9 * efficiency.bandwidth)
        self._dense = work.active_weight_bytes >= work.weight_bytes
        self._comm_ms_per_token = 0.0
        self._comm_fixed_ms = 0.0
        if n > 1:
            link_gbs, kind = device.interconnect_gbs, device.interconnect_kind
            if link_gbs is None:
                assumed = priors["assumed_interconnect"]
                link_gbs, kind = assumed["bandwidth_gbs"], assumed["kind"]
                self.notes.append(f"{device.name}: no interconnect figure for tensor parallel {n}; assumed "
                                  f"{assumed['why']}")
            alpha_us = priors["allreduce_step_latency_us"][kind or "pcie"]["value"]
            allreduces = 2 * work.layers
            bytes_per_token = work.hidden_size * work.activation_bytes
            self._comm_ms_per_token = allreduces * 2 * (n - 1) / n * bytes_per_token / (
                link_gbs * 1e9 * efficiency.interconnect) * 1e3
            self._comm_fixed_ms = allreduces * 2 * (n - 1) * alpha_us * 1e-3

    # The three terms at efficiency 1, before the max: what fit_efficiency regresses on.
    def _terms(self, prefill_tokens, prefill_context, decode_sequences, decode_context_tokens):
        work = self.work
        tokens = prefill_tokens + decode_sequences
        flops = work.linear_flops_per_token * tokens + work.attention_flops_per_token_context * (
            prefill_tokens * prefill_context + decode_context_tokens)
        if self._dense:
            weights = work.weight_bytes
        elif isinstance(tokens, np.ndarray):
            weights = np.minimum(work.weight_bytes, work.active_weight_bytes * tokens)
        else:
            weights = min(work.weight_bytes, work.active_weight_bytes * tokens)
        kv = work.kv_bytes_per_token * (decode_context_tokens + prefill_context + tokens)
        return flops, weights + kv, tokens

    def step_ms(self, prefill_tokens: int, prefill_context: float, decode_sequences: int,
                decode_context_tokens: int) -> float:
        """One engine step: `prefill_tokens` new prompt tokens attending to `prefill_context` tokens on average (the
        tokens before them in their prompt, themselves included) plus one token for each of `decode_sequences`
        running sequences whose attended contexts total `decode_context_tokens`."""
        if prefill_tokens + decode_sequences <= 0:
            return 0.0
        flops, traffic, tokens = self._terms(prefill_tokens, prefill_context, decode_sequences,
                                             decode_context_tokens)
        compute = flops * self._ms_per_flop
        memory = float(traffic) * self._ms_per_byte
        comm = self._comm_ms_per_token * tokens + self._comm_fixed_ms if self._comm_fixed_ms else 0.0
        return (compute if compute > memory else memory) + comm + self.efficiency.step_overhead_ms

    def decode_line(self, decode_sequences: int) -> tuple[float, float, float, float, float]:
        """A pure decode step of `decode_sequences` sequences as two lines in its context total X:
        compute_ms = a_c + b_c X, memory_ms = a_m + b_m X, step_ms = max(compute_ms, memory_ms) + fixed_ms.
        Returns (a_c, b_c, a_m, b_m, fixed_ms): the simulation sums runs of decode steps in closed form with it."""
        work, d = self.work, decode_sequences
        weights = work.weight_bytes if self._dense else min(work.weight_bytes, work.active_weight_bytes * d)
        comm = self._comm_ms_per_token * d + self._comm_fixed_ms if self._comm_fixed_ms else 0.0
        return (work.linear_flops_per_token * d * self._ms_per_flop,
                work.attention_flops_per_token_context * self._ms_per_flop,
                (weights + work.kv_bytes_per_token * d) * self._ms_per_byte,
                work.kv_bytes_per_token * self._ms_per_byte,
                comm + self.efficiency.step_overhead_ms)

    def prefill_ms(self, prompt_tokens: int, max_batched_tokens: int | None = None) -> float:
        """Time to the first token of one prompt on an idle engine: one step, or one step per chunk of at most
        `max_batched_tokens` (chunked prefill). A chunk of k tokens after c computed ones attends c + (k+1)/2 tokens
        on average (causal attention, each token sees itself)."""
        if prompt_tokens <= 0:
            raise PerfError(f"prompt_tokens must be positive, got {prompt_tokens}")
        chunk = prompt_tokens if not max_batched_tokens else max_batched_tokens
        total, done = 0.0, 0
        while done < prompt_tokens:
            k = min(chunk, prompt_tokens - done)
            total += self.step_ms(k, done + (k + 1) / 2, 0, 0)
            done += k
        return total

    def decode_step_ms(self, batch: int, context: int) -> float:
        """One decode step of `batch` sequences each attending `context` tokens (so decode_context_tokens =
        batch x context)."""
        if batch <= 0:
            raise PerfError(f"batch must be positive, got {batch}")
        return self.step_ms(0, 0, batch, batch * context)

    def regime(self, prefill_tokens: int, prefill_context: float, decode_sequences: int,
               decode_context_tokens: int) -> str:
        """'compute' or 'memory': which roofline term bounds this step."""
        flops, traffic, _ = self._terms(prefill_tokens, prefill_context, decode_sequences, decode_context_tokens)
        return "compute" if flops * self._ms_per_flop > float(traffic) * self._ms_per_byte else "memory"

    def to_dict(self) -> dict:
        return {"work": self.work.to_dict(), "device": self.device.to_dict(),
                "efficiency": self.efficiency.to_dict(), "notes": list(self.notes)}


# ---------------------------------------------------------------------------------------------------- priors


@functools.lru_cache(maxsize=1)
def load_priors() -> dict:
    """priors.json: published measurements, their reduction to efficiency factors, and the stated assumptions."""
    return json.loads(PRIORS_PATH.read_text())


def gpu_key(device_name: str) -> str:
    """'H100', 'NVIDIA H100 80GB HBM3', 'h100-sxm' -> 'H100': the first word that is not the vendor."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", device_name.upper()) if w and w not in ("NVIDIA", "TESLA")]
    return words[0] if words else ""


def prior_efficiency(device_name: str, engine: str) -> Efficiency:
    """The engine's efficiency factors from published measurements (priors.json), with the band that the evidence
    allows: narrower where the engine was measured on this GPU, wider where only on other GPUs, widest (and labelled
    "prior: assumed") for an engine or a device the file has no figures for (a CPU, say)."""
    priors = load_priors()
    key = gpu_key(device_name)
    engines = priors["engines"]
    entry = engines.get(engine.lower())
    if entry is None or key not in priors["gpus"]:
        assumed = priors["assumed"]
        what = f"engine {engine!r}" if entry is None else f"device {device_name!r}"
        return Efficiency(assumed["compute"], assumed["bandwidth"], assumed["interconnect"],
                          assumed["step_overhead_ms"], tuple(assumed["relative_interval"]),
                          f"prior: assumed (no published figures for {what}): {assumed['why']}")
    measured_here = key in entry["measured_gpus"]
    band = entry["relative_interval_measured_gpu" if measured_here else "relative_interval_other_gpu"]
    where = f"measured on {key}" if measured_here else f"measured on {', '.join(entry['measured_gpus'])}, not {key}"
    return Efficiency(entry["compute"]["value"], entry["bandwidth"]["value"], entry["interconnect"]["value"],
                      entry["step_overhead_ms"]["value"], tuple(band),
                      f"prior: {engine} published figures ({where}; {entry['summary']})")


# ---------------------------------------------------------------------------------------------------- fitting

FIT_MIN_POINTS = 3
FIT_BAND_FLOOR = (0.95, 1.05)  # in-sample residuals understate the error on new steps: never narrower than this


class FitError(ValueError):
    """Too few or unusable measurements to fit efficiency factors; one line."""


@dataclass(frozen=True)
class FitGroup:
    """Measured steps of one model (ModelWork) on one tensor-parallel group (Device): one unit of a joint fit."""

    work: ModelWork
    device: Device
    points: tuple[StepPoint, ...]


def fit_efficiency(points: list[StepPoint], work: ModelWork, device: Device, *,
                   prior: Efficiency | None = None, engine: str = "vllm") -> Efficiency:
    """Learn the efficiency factors of `device` from measured step times of one model: `fit_efficiency_jointly`
    with a single group (its docstring has the method)."""
    return fit_efficiency_jointly([FitGroup(work, device, tuple(points))], prior=prior, engine=engine)


def fit_efficiency_jointly(groups: list[FitGroup], *, prior: Efficiency | None = None,
                           engine: str = "vllm") -> Efficiency:
    """Learn one set of efficiency factors from measured step times of several models, precisions or
    tensor-parallel degrees (each group its own ModelWork and Device) on one kind of device and engine.

    measured_ms - latency = max(a * Tc, b * Tm) + c * Ti + overhead, with Tc, Tm, Ti the compute, memory and
    interconnect-bandwidth times at efficiency 1 (StepModel of the point's own group) and a, b, c the inverse
    efficiencies; the all-reduce latency term is the stated alpha, not fitted. The factors and the per-step overhead
    are shared by every group: they describe the engine on that device, not the model. The max makes the model
    piecewise linear: each point is assigned to its bound term, the linear model is solved by non-negative least
    squares on relative error (rows divided by the measurement: a 5 ms decode step counts as much as a 500 ms
    prefill), points are reassigned with the new factors, until the assignment holds (from two starts: the prior's
    ratio and efficiency 1; the smaller error wins). A factor that no point exercises (no compute-bound point, a
    single device) keeps the prior's value (the prior of the first group's device by default).
    The band is the 2.5-97.5 % range of measured / predicted, at least FIT_BAND_FLOOR and widened by
    1 + 1/sqrt(N) for N points, because it is measured on the points it was fitted to.
    """
    groups = [g for g in groups if g.points]
    count = sum(len(g.points) for g in groups)
    if count < FIT_MIN_POINTS:
        raise FitError(f"fitting efficiency factors needs at least {FIT_MIN_POINTS} measured steps, got {count}")
    if any(not p.measured_ms > 0 for g in groups for p in g.points):
        raise FitError("every measured step time must be positive")
    prior = prior or prior_efficiency(groups[0].device.name, engine)
    tc, tm, ti, y, measured = [], [], [], [], []
    for group in groups:
        unit = StepModel(group.work, group.device, Efficiency(1.0, 1.0, 1.0, 0.0, (1.0, 1.0), "unit"))
        for p in group.points:
            flops, traffic, tokens = unit._terms(p.prefill_tokens, p.prefill_context, p.decode_sequences,
                                                 p.decode_context_tokens)
            tc.append(flops * unit._ms_per_flop)
            tm.append(float(traffic) * unit._ms_per_byte)
            ti.append(unit._comm_ms_per_token * tokens)
            y.append(p.measured_ms - unit._comm_fixed_ms)
            measured.append(p.measured_ms)
    tc, tm, ti, y = np.array(tc), np.array(tm), np.array(ti), np.array(y)
    weight = 1.0 / np.array(measured)
    prior_inv = np.array([1 / prior.compute, 1 / prior.bandwidth, 1 / prior.interconnect])
    inv, overhead = _solve_piecewise(tc, tm, ti, y, weight, prior_inv)
    efficiency = np.clip(1.0 / inv, 1e-3, 1.5)
    fitted = Efficiency(*(float(e) for e in efficiency), overhead, (1.0, 1.0), "fit")
    ratio = np.array([p.measured_ms / StepModel(g.work, g.device, fitted).step_ms(
        p.prefill_tokens, p.prefill_context, p.decode_sequences, p.decode_context_tokens)
        for g in groups for p in g.points])
    widen = 1.0 + 1.0 / math.sqrt(count)
    lo = min(float(np.quantile(ratio, 0.025)), FIT_BAND_FLOOR[0]) / widen
    hi = max(float(np.quantile(ratio, 0.975)), FIT_BAND_FLOOR[1]) * widen
    if len(groups) == 1:
        device = groups[0].device
        where = f"{device.name} x{device.count}"
    else:
        where = ", ".join(dict.fromkeys(f"{g.device.name} x{g.device.count}" for g in groups))
    return Efficiency(fitted.compute, fitted.bandwidth, fitted.interconnect, overhead, (lo, hi),
                      f"fitted on {count} measurements of {where}/{engine}")


def _solve_piecewise(tc: np.ndarray, tm: np.ndarray, ti: np.ndarray, y: np.ndarray, weight: np.ndarray,
                     prior_inv: np.ndarray) -> tuple[np.ndarray, float]:
    """The inverse efficiencies (compute, bandwidth, interconnect) and the overhead that minimise the relative
    squared error of y ~ max(a tc, b tm) + c ti + overhead (fit_efficiency_jointly's docstring)."""
    from scipy.optimize import nnls

    def solve(compute_bound: np.ndarray) -> tuple[np.ndarray, float]:
        columns = [np.where(compute_bound, tc, 0.0), np.where(compute_bound, 0.0, tm), ti]
        fixed = np.zeros_like(y)
        free = []
        for i, col in enumerate(columns):
            if np.any(col > 0) and (i < 2 or np.ptp(col) > 0):
                free.append(i)
            else:
                fixed += prior_inv[i] * col
        design = np.column_stack([columns[i] for i in free] + [np.ones_like(y)]) * weight[:, None]
        solution, _ = nnls(design, (y - fixed) * weight)
        inv = prior_inv.copy()
        for j, i in enumerate(free):
            inv[i] = solution[j] if solution[j] > 0 else prior_inv[i]
        return inv, float(solution[-1])

    best = None
    for start in (prior_inv[0] * tc > prior_inv[1] * tm, tc > tm):
        bound = start
        for _ in range(20):
            inv, overhead = solve(bound)
            new = inv[0] * tc > inv[1] * tm
            if np.array_equal(new, bound):
                break
            bound = new
        predicted = np.maximum(inv[0] * tc, inv[1] * tm) + inv[2] * ti + overhead
        error = float(np.sum(((y - predicted) * weight) ** 2))
        if best is None or error < best[0]:
            best = (error, inv, overhead)
    return best[1], best[2]
