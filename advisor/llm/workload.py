"""The serving workload a generative LLM is planned for: prompt and output lengths, arrival rate and process.

Lengths are a fixed number of tokens or a histogram: bins of one length or of a range of lengths (drawn uniformly
within the bin), each with a weight. Arrivals are Poisson (exponential gaps, mean 1 / rate: independent users) or
constant (one request every 1 / rate seconds: a batch job or a load generator at a fixed rate). A shared prefix (a
system prompt every request starts with) is a fraction of the mean prompt that prefix caching serves from the cache:
it is neither recomputed nor stored per request (advisor.llm.simulate).

Workload files are YAML or JSON (docs/llm.md, "Workload files"; example in examples/llm/workload.yaml):

    prompt_tokens: 2000                      # or {histogram: [{tokens: [1000, 3000], weight: 0.7}, ...]}
    output_tokens: {histogram: [{tokens: 300, weight: 0.8}, {tokens: [300, 1000], weight: 0.2}]}
    rate_rps: 4
    arrival: poisson                         # or constant
    shared_prefix_fraction: 0.0
    duration_s: 600
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ARRIVALS = ("poisson", "constant")
DEFAULT_DURATION_S = 600.0  # 2,400 requests at 4 rps: enough for a p99 and its bootstrap interval


class WorkloadError(ValueError):
    """A workload the user can fix; the message is one line naming the file and the field."""


@dataclass(frozen=True)
class LengthDistribution:
    """Token lengths: bins [low, high] (inclusive; low == high for one length) with weights summing to 1."""

    lows: tuple[int, ...]
    highs: tuple[int, ...]
    weights: tuple[float, ...]

    def __post_init__(self):
        if not (len(self.lows) == len(self.highs) == len(self.weights)) or not self.lows:
            raise WorkloadError("a length distribution needs at least one bin, with as many weights as bins")
        for low, high in zip(self.lows, self.highs):
            if not 1 <= low <= high:
                raise WorkloadError(f"token lengths must be at least 1 and a bin's low <= high, got [{low}, {high}]")
        if any(w < 0 for w in self.weights) or not sum(self.weights) > 0:
            raise WorkloadError("bin weights must not be negative and must not all be 0")
        total = float(sum(self.weights))
        object.__setattr__(self, "weights", tuple(float(w) / total for w in self.weights))

    @classmethod
    def fixed(cls, tokens: int) -> LengthDistribution:
        return cls((int(tokens),), (int(tokens),), (1.0,))

    @classmethod
    def histogram(cls, bins: list[int | tuple[int, int]], weights: list[float]) -> LengthDistribution:
        lows = tuple(int(b[0]) if isinstance(b, (tuple, list)) else int(b) for b in bins)
        highs = tuple(int(b[1]) if isinstance(b, (tuple, list)) else int(b) for b in bins)
        return cls(lows, highs, tuple(weights))

    @property
    def mean(self) -> float:
        return float(sum(w * (lo + hi) / 2 for lo, hi, w in zip(self.lows, self.highs, self.weights)))

    @property
    def max(self) -> int:
        return max(high for high, w in zip(self.highs, self.weights) if w > 0)

    @property
    def is_fixed(self) -> bool:
        return len(self.lows) == 1 and self.lows[0] == self.highs[0]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n lengths: a bin by weight, then a length uniformly within the bin."""
        if self.is_fixed:
            return np.full(n, self.lows[0], dtype=np.int64)
        bins = rng.choice(len(self.weights), size=n, p=np.asarray(self.weights))
        lows = np.asarray(self.lows)[bins]
        highs = np.asarray(self.highs)[bins]
        return lows + np.floor(rng.random(n) * (highs - lows + 1)).astype(np.int64)

    def to_dict(self) -> dict:
        if self.is_fixed:
            return {"fixed": self.lows[0], "mean": self.mean}
        return {"histogram": [{"tokens": lo if lo == hi else [lo, hi], "weight": w}
                              for lo, hi, w in zip(self.lows, self.highs, self.weights)], "mean": self.mean}

    @classmethod
    def from_dict(cls, data: dict | int) -> LengthDistribution:
        return _length(_LengthSpec.model_validate({"value": data}).value)


@dataclass(frozen=True)
class Workload:
    prompt_tokens: LengthDistribution
    output_tokens: LengthDistribution
    rate_rps: float
    arrival: str = "poisson"  # poisson | constant
    shared_prefix_fraction: float = 0.0
    duration_s: float = DEFAULT_DURATION_S

    def __post_init__(self):
        if not self.rate_rps > 0:
            raise WorkloadError(f"rate_rps must be positive, got {self.rate_rps}")
        if self.arrival not in ARRIVALS:
            raise WorkloadError(f"arrival must be one of {', '.join(ARRIVALS)}, got {self.arrival!r}")
        if not 0 <= self.shared_prefix_fraction < 1:
            raise WorkloadError(f"shared_prefix_fraction must be in [0, 1), got {self.shared_prefix_fraction}")
        if not self.duration_s > 0:
            raise WorkloadError(f"duration_s must be positive, got {self.duration_s}")

    @classmethod
    def fixed(cls, prompt: int, output: int, rate: float, **kwargs) -> Workload:
        """Every request `prompt` tokens in and `output` tokens out, Poisson arrivals at `rate` per second."""
        return cls(LengthDistribution.fixed(prompt), LengthDistribution.fixed(output), float(rate), **kwargs)

    def at_rate(self, rate_rps: float) -> Workload:
        return replace(self, rate_rps=float(rate_rps))

    def arrival_times(self, rng: np.random.Generator) -> np.ndarray:
        """Arrival times in [0, duration_s). Poisson: cumulative exponential gaps of mean 1/rate, drawn as unit
        exponentials scaled by 1/rate, so one seed gives the same pattern, stretched, at every rate."""
        expected = self.rate_rps * self.duration_s
        if self.arrival == "constant":
            return np.arange(int(np.ceil(expected)), dtype=np.float64) / self.rate_rps
        n = int(expected + 10 * np.sqrt(expected) + 10)
        times = np.cumsum(rng.standard_exponential(n)) / self.rate_rps
        while times[-1] < self.duration_s:  # the draw ran short (astronomically rare): extend it
            times = np.concatenate([times, times[-1] + np.cumsum(rng.standard_exponential(n)) / self.rate_rps])
        return times[times < self.duration_s]

    def to_dict(self) -> dict:
        """report.json's workload block: mean lengths as numbers (what a benchmark replays) plus the distributions."""
        return {"prompt_tokens": round(self.prompt_tokens.mean), "output_tokens": round(self.output_tokens.mean),
                "rate_rps": self.rate_rps, "arrival": self.arrival,
                "shared_prefix_fraction": self.shared_prefix_fraction, "duration_s": self.duration_s,
                "prompt_tokens_distribution": self.prompt_tokens.to_dict(),
                "output_tokens_distribution": self.output_tokens.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> Workload:
        spec = dict(data)
        spec["prompt_tokens"] = spec.pop("prompt_tokens_distribution", spec.get("prompt_tokens"))
        spec["output_tokens"] = spec.pop("output_tokens_distribution", spec.get("output_tokens"))
        return _workload(_WorkloadSpec.model_validate(spec))


# ------------------------------------------------------------------------------------------ the file schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Bin(_Strict):
    tokens: Union[int, tuple[int, int]]
    weight: float = Field(ge=0)

    @field_validator("tokens")
    @classmethod
    def _positive(cls, value):
        low, high = (value, value) if isinstance(value, int) else value
        if low < 1 or high < low:
            raise ValueError("a bin is a length >= 1 or a range [low, high] with 1 <= low <= high")
        return value


class _Fixed(_Strict):
    fixed: int = Field(ge=1)
    mean: float | None = None  # written by to_dict; ignored on reading


class _Histogram(_Strict):
    histogram: list[_Bin] = Field(min_length=1)
    mean: float | None = None

    @field_validator("histogram")
    @classmethod
    def _weights(cls, bins):
        if not sum(b.weight for b in bins) > 0:
            raise ValueError("the bin weights must not all be 0")
        return bins


class _LengthSpec(_Strict):
    value: Union[int, _Fixed, _Histogram]

    @field_validator("value")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("a token length must be at least 1")
        return value


class _WorkloadSpec(_Strict):
    prompt_tokens: Union[int, _Fixed, _Histogram]
    output_tokens: Union[int, _Fixed, _Histogram]
    rate_rps: float = Field(gt=0)
    arrival: Literal["poisson", "constant"] = "poisson"
    shared_prefix_fraction: float = Field(default=0.0, ge=0, lt=1)
    duration_s: float = Field(default=DEFAULT_DURATION_S, gt=0)

    @field_validator("prompt_tokens", "output_tokens")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("a token length must be at least 1")
        return value


def _length(spec) -> LengthDistribution:
    if isinstance(spec, int):
        return LengthDistribution.fixed(spec)
    if isinstance(spec, _Fixed):
        return LengthDistribution.fixed(spec.fixed)
    return LengthDistribution.histogram([b.tokens for b in spec.histogram], [b.weight for b in spec.histogram])


def _workload(spec: _WorkloadSpec) -> Workload:
    return Workload(_length(spec.prompt_tokens), _length(spec.output_tokens), spec.rate_rps, spec.arrival,
                    spec.shared_prefix_fraction, spec.duration_s)


def _first_error(error: ValidationError) -> tuple[str, str]:
    """The most specific problem as (dotted field path, message). A value tried against a union (a length, a bin's
    tokens) fails once per branch; the deepest error says what was meant, and the branch tags (int, _Histogram,
    tuple[int, int]) are left out of the path."""
    deepest = max(error.errors(), key=lambda e: len(e["loc"]))
    path = [str(p) for p in deepest["loc"]
            if not (isinstance(p, str) and (p in ("int", "float") or "[" in p or p[:1] == "_" or p[:1].isupper()))]
    return ".".join(path) or "(top level)", deepest["msg"].removeprefix("Value error, ")


def load_workload(path: Path | str) -> Workload:
    """A workload file (YAML or JSON); any problem is one WorkloadError line naming the file and the field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise WorkloadError(f"{path}: cannot read the workload file ({error.strerror or error})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        mark = getattr(error, "problem_mark", None)  # YAML marks count lines from 0, JSON errors from 1
        where = getattr(error, "lineno", None) or (mark.line + 1 if mark is not None else None)
        raise WorkloadError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}"
                            f"{f' (line {where})' if where else ''}") from None
    if not isinstance(data, dict):
        raise WorkloadError(f"{path}: a workload file is a mapping with prompt_tokens, output_tokens and rate_rps")
    try:
        return _workload(_WorkloadSpec.model_validate(data))
    except ValidationError as error:
        field_path, message = _first_error(error)
        raise WorkloadError(f"{path}: {field_path}: {message}") from None
    except WorkloadError as error:
        raise WorkloadError(f"{path}: {error}") from None
