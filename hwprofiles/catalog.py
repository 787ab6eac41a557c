"""The instance catalogue: YAML/JSON data files validated with a pydantic schema (docs/catalog.md).

Bundled files (hwprofiles/catalog/*.yaml) load first; `--catalog FILE` files add entries or replace them by
name. Any problem is one UserError line naming the file, the entry and the field.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from advisor.errors import UserError

PROVIDERS = ("aws", "gcp", "azure", "local", "other")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CpuSpec(_Strict):
    vendor: str
    model: str
    microarchitecture: str
    isa: tuple[str, ...] = ()
    physical_cores: int = Field(gt=0)
    smt: bool = False


class GpuSpec(_Strict):
    model: str
    count: int = Field(gt=0)
    memory_gib: float = Field(gt=0)


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
