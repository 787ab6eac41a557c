"""One LLM measurement as data (schema advisor.llm.measurement/v1): engine step times, and optionally a serving
run's latencies, on one hardware with one engine, with the versions and the date. The local engine
(advisor.llm.measure_local), `advisor bench-serve` and bench/gpu_llm_calibration.py write them; the calibration
(advisor.llm.calibration) fits the performance model's efficiency factors from them. Stored measurements live in
hwprofiles/measurements/llm/*.json (docs/llm.md, "Measurements").

A step is what advisor.llm.perf.StepModel predicts:
- prefill: `batch` prompts of `prompt_tokens` tokens each, computed in one step (context 0: a fresh prompt);
- decode: one new token for each of `batch` sequences, each attending `context` tokens (its KV cache length).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from advisor.llm.perf import ModelWork, StepPoint

SCHEMA = "advisor.llm.measurement/v1"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class MeasurementError(ValueError):
    """A measurement file that cannot be used; one line naming the file and the field."""


@dataclass(frozen=True)
class StepTiming:
    kind: Literal["prefill", "decode"]
    batch: int
    prompt_tokens: int  # prefill: tokens per prompt; decode: 0
    context: int  # decode: tokens each sequence attends; prefill: 0
    ms: float  # median over `samples`
    ms_interval: tuple[float, float]  # 95 % interval of the median
    samples: int

    def __post_init__(self):
        if self.kind not in ("prefill", "decode"):
            raise MeasurementError(f"step kind must be prefill or decode, got {self.kind!r}")
        if self.batch < 1 or self.samples < 1:
            raise MeasurementError("a step's batch and samples must be at least 1")
        if self.kind == "prefill" and self.prompt_tokens < 1:
            raise MeasurementError("a prefill step needs prompt_tokens >= 1")
        if self.kind == "decode" and self.context < 1:
            raise MeasurementError("a decode step needs context >= 1")
        if not self.ms > 0:
            raise MeasurementError(f"a step time must be positive, got {self.ms}")
        lo, hi = self.ms_interval
        if not 0 <= lo <= self.ms <= hi:
            raise MeasurementError(f"a step's interval must hold its median: {self.ms_interval} vs {self.ms}")

    def point(self) -> StepPoint:
        """The step as advisor.llm.perf sees it (a prompt's tokens attend (p + 1) / 2 tokens on average)."""
        if self.kind == "prefill":
            return StepPoint(self.batch * self.prompt_tokens, (self.prompt_tokens + 1) / 2, 0, 0, self.ms)
        return StepPoint(0, 0.0, self.batch, self.batch * self.context, self.ms)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "batch": self.batch, "prompt_tokens": self.prompt_tokens, "context": self.context,
                "ms": self.ms, "ms_interval": list(self.ms_interval), "samples": self.samples}

    @classmethod
    def from_dict(cls, data: dict) -> StepTiming:
        return cls(str(data["kind"]), int(data["batch"]), int(data.get("prompt_tokens", 0)),
                   int(data.get("context", 0)), float(data["ms"]), tuple(float(v) for v in data["ms_interval"]),
                   int(data["samples"]))


@dataclass(frozen=True)
class Hardware:
    kind: Literal["cpu", "gpu"]
    name: str  # "NVIDIA H100 80GB HBM3", "Intel Xeon (Sapphire Rapids)": what advisor.llm.perf.gpu_key reads
    count: int  # devices used (the tensor-parallel degree on GPUs; 1 on a CPU)
    peak_tflops: float  # per device, at the compute dtype measured
    memory_bandwidth_gbs: float  # per device
    detail: dict = field(default_factory=dict)  # cores, ISA, driver, catalogue instance, where the peaks come from

    def __post_init__(self):
        if self.kind not in ("cpu", "gpu"):
            raise MeasurementError(f"hardware kind must be cpu or gpu, got {self.kind!r}")
        if self.count < 1 or not self.peak_tflops > 0 or not self.memory_bandwidth_gbs > 0:
            raise MeasurementError("hardware count, peak_tflops and memory_bandwidth_gbs must be positive")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "count": self.count, "peak_tflops": self.peak_tflops,
                "memory_bandwidth_gbs": self.memory_bandwidth_gbs, "detail": dict(self.detail)}

    @classmethod
    def from_dict(cls, data: dict) -> Hardware:
        return cls(str(data["kind"]), str(data["name"]), int(data["count"]), float(data["peak_tflops"]),
                   float(data["memory_bandwidth_gbs"]), dict(data.get("detail", {})))


@dataclass(frozen=True)
class LlmMeasurement:
    id: str  # unique among stored measurements, e.g. "ort-genai-tiny-llama-fp32-sapphirerapids-2026-12-06"
    date: str  # YYYY-MM-DD
    source: str  # what produced it: "advisor.llm.measure_local", "bench/gpu_llm_calibration.py", "advisor bench-serve"
    hardware: Hardware
    engine: str  # "onnxruntime-genai", "pytorch", "vllm"
    engine_version: str
    versions: dict  # every other version that matters: torch, CUDA, driver, onnxruntime, python
    model: str  # a name: "tiny-llama (2 layers, hidden 128)", "Llama-3.1-8B architecture, random weights"
    work: ModelWork  # what one token of it costs (advisor.llm.perf.model_work at `precision`)
    precision: str  # advisor.llm.precision names: fp32, bf16, fp16, fp8, int8-wo, int4-wo
    tensor_parallel: int
    steps: tuple[StepTiming, ...]
    serving: dict | None = None  # a bench-serve result (its --json object) when the record holds one
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.id or not re.match(r"^[A-Za-z0-9._-]+$", self.id):
            raise MeasurementError(f"a measurement id must be letters, digits, '.', '_' or '-', got {self.id!r}")
        if not _DATE.match(self.date):
            raise MeasurementError(f"date must be YYYY-MM-DD, got {self.date!r}")
        if self.tensor_parallel < 1:
            raise MeasurementError("tensor_parallel must be at least 1")
        if not self.steps and self.serving is None:
            raise MeasurementError("a measurement needs step timings or a serving result")

    def points(self) -> list[StepPoint]:
        return [s.point() for s in self.steps]

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "id": self.id, "date": self.date, "source": self.source,
                "hardware": self.hardware.to_dict(), "engine": self.engine, "engine_version": self.engine_version,
                "versions": dict(self.versions), "model": self.model, "work": self.work.to_dict(),
                "precision": self.precision, "tensor_parallel": self.tensor_parallel,
                "steps": [s.to_dict() for s in self.steps], "serving": self.serving, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict) -> LlmMeasurement:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else None
            raise MeasurementError(f"not an {SCHEMA} object (schema {found!r})")
        try:
            return cls(str(data["id"]), str(data["date"]), str(data["source"]), Hardware.from_dict(data["hardware"]),
                       str(data["engine"]), str(data["engine_version"]), dict(data.get("versions", {})),
                       str(data["model"]), ModelWork(**data["work"]), str(data["precision"]),
                       int(data["tensor_parallel"]), tuple(StepTiming.from_dict(s) for s in data.get("steps", [])),
                       data.get("serving"), tuple(data.get("notes", [])))
        except MeasurementError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise MeasurementError(f"malformed measurement: {type(error).__name__}: {error}") from None


def load_measurement(path: Path | str) -> LlmMeasurement:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise MeasurementError(f"{path}: cannot read ({error.strerror or error})") from None
    except ValueError as error:
        raise MeasurementError(f"{path}: not valid JSON ({error})") from None
    try:
        return LlmMeasurement.from_dict(data)
    except MeasurementError as error:
        raise MeasurementError(f"{path}: {error}") from None
