"""The instance catalogue: YAML/JSON data files validated with a pydantic schema (docs/catalog.md).

Bundled files (hwprofiles/catalog/*.yaml) load first; `--catalog FILE` files add entries or replace them by
name. Any problem is one UserError line naming the file, the entry and the field.

GPU entries may carry per-GPU figures for the LLM planner, all optional so that older user catalogues stay valid:
the CUDA compute capability, dense tensor-core peaks per data type (`tflops`, TOPS for the integer types; no 2:4
sparsity), the memory bandwidth, and the GPU-to-GPU link (per GPU, one direction). The instance's `peak` block
stays the whole instance: datasheet figure x GPU count. fp8 tensor cores exist from compute capability 8.9 (Ada,
Hopper) on, so an fp8 peak on an older GPU is rejected (CUDA C++ Programming Guide, "Compute capabilities").
"""

from __future__ import annotations

import importlib.resources
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from advisor.errors import UserError

PROVIDERS = ("aws", "gcp", "azure", "local", "other")
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4")
FP8_MIN_COMPUTE_CAPABILITY = 8.9  # Ada (8.9) and Hopper (9.0) have fp8 tensor cores; Ampere (8.0, 8.6) has not
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class UnknownDtype(ValueError):
    """A data type the catalogue has no peak field for (a programming error in the caller, not user input)."""


def _known_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise UnknownDtype(f"unknown dtype {dtype!r}; the catalogue knows {', '.join(DTYPES)}")
    return dtype


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CpuSpec(_Strict):
    vendor: str
    model: str
    microarchitecture: str
    isa: tuple[str, ...] = ()
    physical_cores: int = Field(gt=0)
    smt: bool = False


class TflopsSpec(_Strict):
    """Dense tensor-core peaks of one GPU, TFLOPS (TOPS for int8/int4), as the vendor datasheet gives them without
    sparsity; fp32 is the CUDA-core peak. A type the GPU has no tensor-core path for is left out."""

    fp32: float | None = Field(default=None, gt=0)
    tf32: float | None = Field(default=None, gt=0)
    bf16: float | None = Field(default=None, gt=0)
    fp16: float | None = Field(default=None, gt=0)
    fp8: float | None = Field(default=None, gt=0)
    int8: float | None = Field(default=None, gt=0)
    int4: float | None = Field(default=None, gt=0)


class InterconnectSpec(_Strict):
    """How the instance's GPUs reach each other: per GPU, one direction, GB/s (NVLink 4's 900 GB/s total is 450)."""

    kind: Literal["nvswitch", "nvlink", "pcie"]
    bandwidth_gbs: float = Field(gt=0)


class GpuSpec(_Strict):
    model: str
    count: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    compute_capability: float | None = Field(default=None, gt=0)
    tflops: TflopsSpec | None = None
    memory_bandwidth_gbs: float | None = Field(default=None, gt=0)  # per GPU (HBM/GDDR)
    interconnect: InterconnectSpec | None = None  # absent on single-GPU instances

    @model_validator(mode="after")
    def _fp8_needs_ada_or_hopper(self) -> GpuSpec:
        if (self.tflops is not None and self.tflops.fp8 is not None and self.compute_capability is not None
                and self.compute_capability < FP8_MIN_COMPUTE_CAPABILITY):
            raise ValueError(f"an fp8 peak is given, but compute capability {self.compute_capability:.1f} has no fp8 "
                             f"tensor cores (they start at {FP8_MIN_COMPUTE_CAPABILITY:.1f})")
        return self

    def peak_tflops(self, dtype: str) -> float | None:
        """Dense peak of one GPU at `dtype` (one of DTYPES), or None where the catalogue has no figure."""
        dtype = _known_dtype(dtype)
        return getattr(self.tflops, dtype) if self.tflops is not None else None


class PeakSpec(_Strict):
    fp32_gflops: float = Field(gt=0)
    fp16_gflops: float = Field(gt=0)
    int8_gops: float = Field(gt=0)
    bandwidth_gbs: float = Field(gt=0)


class Instance(_Strict):
    name: str = Field(min_length=1)
    provider: str
    region: str
    vcpus: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    price_per_hour: float = Field(gt=0)
    spot_price_per_hour: float | None = Field(default=None, gt=0)
    cpu: CpuSpec
    gpu: GpuSpec | None = None
    peak: PeakSpec
    price_source: str = Field(min_length=1)
    price_date: str
    spec_source: str = Field(min_length=1)
    spec_date: str

    @field_validator("price_date", "spec_date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        if not _DATE.match(str(value)):
            raise ValueError("must be a date YYYY-MM-DD")
        return str(value)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in PROVIDERS:
            raise ValueError(f"must be one of {', '.join(PROVIDERS)}")
        return value

    @property
    def is_gpu(self) -> bool:
        return self.gpu is not None

    def gpu_peak_tflops(self, dtype: str) -> float | None:
        """Dense peak of one of this instance's GPUs at `dtype`; None for CPU instances or where no figure is
        given. Multiply by `gpu.count` for the instance (the `peak` block already holds that total)."""
        dtype = _known_dtype(dtype)
        return self.gpu.peak_tflops(dtype) if self.gpu is not None else None

    def to_dict(self) -> dict:
        return self.model_dump()


@dataclass(frozen=True)
class Catalog:
    instances: tuple[Instance, ...]
    sources: tuple[str, ...]  # files loaded, in order

    def get(self, name: str) -> Instance | None:
        return next((i for i in self.instances if i.name == name), None)

    def __len__(self) -> int:
        return len(self.instances)


def _parse(text: str, origin: str) -> dict:
    try:
        data = json.loads(text) if origin.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"catalog {origin}: not valid {'JSON' if origin.endswith('.json') else 'YAML'}: {first}") \
            from None
    if not isinstance(data, dict) or not isinstance(data.get("instances"), list):
        raise UserError(f"catalog {origin}: expected a mapping with an 'instances' list")
    return data


def _entries(data: dict, origin: str) -> list[Instance]:
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise UserError(f"catalog {origin}: 'defaults' must be a mapping")
    provider = data.get("provider")
    instances = []
    for index, raw in enumerate(data["instances"]):
        label = raw.get("name", f"#{index + 1}") if isinstance(raw, dict) else f"#{index + 1}"
        if not isinstance(raw, dict):
            raise UserError(f"catalog {origin}: entry {label!r}: must be a mapping")
        merged = {**defaults, **({"provider": provider} if provider else {}), **raw}
        try:
            instances.append(Instance.model_validate(merged))
        except ValidationError as error:
            problem = error.errors()[0]
            field = ".".join(str(part) for part in problem["loc"]) or "(entry)"
            message = problem["msg"].removeprefix("Value error, ")
            raise UserError(f"catalog {origin}: entry {label!r}: field {field!r}: {message}") from None
    return instances


def _bundled() -> list[tuple[str, str]]:
    folder = importlib.resources.files("hwprofiles") / "catalog"
    return sorted((f"hwprofiles/catalog/{item.name}", item.read_text(encoding="utf-8"))
                  for item in folder.iterdir() if item.name.endswith((".yaml", ".yml", ".json")))


def load_catalog(paths: list[Path] | None = None, providers: list[str] | None = None,
                 region: str | None = None) -> Catalog:
    """Bundled catalogue plus user files (which add or replace entries by name), then filtered."""
    by_name: dict[str, Instance] = {}
    sources = []
    documents = _bundled()
    for path in paths or []:
        path = Path(path)
        try:
            documents.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"catalog {path}: cannot read it ({type(error).__name__})") from None
    for origin, text in documents:
        for instance in _entries(_parse(text, origin), origin):
            by_name[instance.name] = instance
        sources.append(origin)
    instances = list(by_name.values())
    if providers:
        unknown = [p for p in providers if p not in PROVIDERS]
        if unknown:
            raise UserError(f"--provider {','.join(unknown)}: unknown provider; choose from {', '.join(PROVIDERS)}")
        instances = [i for i in instances if i.provider in providers]
    if region:
        instances = [i for i in instances if i.region == region]
    if not instances:
        raise UserError("no catalogue instance is left after the --provider/--region filters")
    return Catalog(tuple(instances), tuple(sources))
