"""The one list of backends: each one's implementing class, budget weight, pip extra and declared capabilities.

Adding a backend is one module in tuners/ plus one entry here. No other module keeps a list of backend names:
which package versions a run's environment records, which config key holds the threads the cost model scales,
whether an estimate on another CPU may be recommended, which backends a TVM RPC device accepts, the install hint
of a missing dependency and the split of the budget are all read from the entries (docs/architecture.md).

Nothing is imported or parsed when this module is imported: a backend's module is imported by `load_tuner` (so
`advisor --help` stays fast and works without TVM or TensorRT installed), and ADVISOR_TUNERS is parsed on first
use, so a malformed value is a one-line UserError where it is needed, never an import-time failure.

ADVISOR_TUNERS declares backends outside this package (workers read it too), in either form:

    name=module:Class,other=module:Class            default capabilities
    [{"name": "mine", "target": "module:Class", "extra": null, "budget_weight": 1.0,
      "capabilities": {"packages": ["mylib"], "thread_setting": "threads"}}]
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from advisor.errors import UserError
from tuners.base import Capabilities

if TYPE_CHECKING:
    from tuners.base import Tuner

PLUGINS_VARIABLE = "ADVISOR_TUNERS"


@dataclass(frozen=True)
class TunerEntry:
    name: str
    target: str  # "module:Class"
    description: str = ""
    extra: str | None = None  # the pip extra that installs its dependencies: advisor[extra]
    budget_weight: float = 1.0  # share of the tuning budget relative to the other backends on the same target
    capabilities: Capabilities = field(default_factory=Capabilities)

    @property
    def install_hint(self) -> str | None:
        """What a user runs to install it: declared, else the extra's pip command, else its packages'."""
        if self.capabilities.install_hint:
            return self.capabilities.install_hint
        if self.extra:
            return f"pip install 'advisor[{self.extra}]'"
        return f"pip install {' '.join(self.capabilities.packages)}" if self.capabilities.packages else None


BUILTIN: tuple[TunerEntry, ...] = (
    TunerEntry("onnxruntime", "tuners.onnxruntime:OnnxRuntimeTuner",
               "ONNX Runtime: execution providers, graph optimisation, threads, dynamic int8",
               capabilities=Capabilities(packages=("onnxruntime", "onnxruntime-gpu"), install_hint="pip install "
                                         "onnxruntime", thread_setting="intra_op_threads")),
    TunerEntry("tvm", "tuners.tvm:TvmTuner",
               "Apache TVM: Relax import, default build and MetaSchedule tuning with a persistent database",
               extra="tvm", budget_weight=2.0,
               capabilities=Capabilities(packages=("apache-tvm", "apache-tvm-ffi"), thread_setting="num_threads",
                                         portable_across_cpus=False, remote_devices=True, any_batch=False)),
    TunerEntry("tensorrt", "tuners.tensorrt:TensorRtTuner", "NVIDIA TensorRT engines", extra="tensorrt",
               capabilities=Capabilities(packages=("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "cuda-python"),
                                         any_batch=False)),
    TunerEntry("openvino", "tuners.openvino:OpenVinoTuner",
               "OpenVINO on CPUs: performance hints, streams, threads, bf16 where the CPU computes it",
               extra="openvino", capabilities=Capabilities(packages=("openvino",),
                                                           thread_setting="inference_num_threads")),
    TunerEntry("pytorch", "tuners.pytorch:PyTorchTuner",
               "PyTorch: the source module (or the ONNX model via onnx2torch), eager or torch.compile, autocast, "
               "channels-last, CUDA graphs", extra="pytorch",
               capabilities=Capabilities(packages=("torch", "onnx2torch"), thread_setting="threads",
                                         any_batch=True, portable_across_cpus=True)),
)


# ---- ADVISOR_TUNERS, parsed on first use -------------------------------------------------------------------------

def _unknown_keys(data: Any, kind: type, where: str) -> list[str]:
    """Keys of a JSON object that are not fields of the dataclass `kind` (pydantic ignores them silently)."""
    if not isinstance(data, dict):
        return []
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = [f"{where}{key}" for key in data if key not in fields]
    if isinstance(data.get("capabilities"), dict) and kind is TunerEntry:
        unknown += _unknown_keys(data["capabilities"], Capabilities, f"{where}capabilities.")
    return unknown


def _json_plugins(text: str) -> list[TunerEntry]:
    import pydantic

    try:
        items = json.loads(text)
    except ValueError as error:
        raise UserError(f"{PLUGINS_VARIABLE} is not valid JSON: {error}") from None
    if not isinstance(items, list):
        raise UserError(f"{PLUGINS_VARIABLE} in JSON form must be a list of entries")
    unknown = [key for item in items for key in _unknown_keys(item, TunerEntry, "")]
    if unknown:
        raise UserError(f"{PLUGINS_VARIABLE}: unknown field {', '.join(unknown)}")
    try:
        entries = pydantic.TypeAdapter(list[TunerEntry]).validate_json(text, strict=True)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"{PLUGINS_VARIABLE}: entry {where}: {first['msg']}") from None
    for entry in entries:
        if ":" not in entry.target:
            raise UserError(f"{PLUGINS_VARIABLE} entry {entry.name!r}: target {entry.target!r} is not module:Class")
    return entries


def _plugins(spec: str) -> list[TunerEntry]:
    if spec.lstrip().startswith(("[", "{")):
        return _json_plugins(spec)
    entries = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, target = item.partition("=")
        if not name or ":" not in target:
            raise UserError(f"{PLUGINS_VARIABLE} entry {item!r} is not NAME=module:Class")
        entries.append(TunerEntry(name, target, f"plugin {target}"))
    return entries


@lru_cache(maxsize=4)
def _entries(spec: str) -> dict[str, TunerEntry]:
    return {entry.name: entry for entry in (*BUILTIN, *_plugins(spec))}


def entries() -> dict[str, TunerEntry]:
    """Every backend, built-in then plugins (re-read when ADVISOR_TUNERS changes)."""
    return _entries(os.environ.get(PLUGINS_VARIABLE, ""))


class _Registry(Mapping[str, TunerEntry]):
    """`TUNERS[name]`: the entries as a mapping, parsed on first access."""

    def __getitem__(self, name: str) -> TunerEntry:
        return entries()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(entries())

    def __len__(self) -> int:
        return len(entries())


TUNERS: Mapping[str, TunerEntry] = _Registry()


# ---- what the rest of the advisor asks ---------------------------------------------------------------------------

def capabilities_of(name: str) -> Capabilities:
    """The backend's declared capabilities; the defaults for a name that is not registered."""
    entry = entries().get(name)
    return entry.capabilities if entry else Capabilities()


def install_hint_of(name: str) -> str | None:
    entry = entries().get(name)
    return entry.install_hint if entry else None


def accepts_any_batch(name: str) -> bool:
    """Whether a build of this backend serves batch sizes it was not measured at (sizing may then interpolate)."""
    return capabilities_of(name).any_batch


def portable_across_cpus(name: str) -> bool:
    """Whether this backend's deployable form runs as measured on another CPU of the same architecture."""
    return capabilities_of(name).portable_across_cpus


def remote_backends() -> list[str]:
    """The backends that build for and measure on a TVM RPC device."""
    return [name for name, entry in entries().items() if entry.capabilities.remote_devices]


def thread_count(name: str, config: Mapping[str, Any]) -> int:
    """The threads one inference of this configuration uses, from the entry's declared config key (0: all cores,
    also when the backend declares no thread setting)."""
    key = capabilities_of(name).thread_setting
    return int(config.get(key, 0) or 0) if key else 0


def declared_packages() -> list[str]:
    """Every backend's declared packages, in registry order, without repeats."""
    return list(dict.fromkeys(package for entry in entries().values() for package in entry.capabilities.packages))


def tuner_names() -> list[str]:
    return list(entries())


def parse_backends(text: str | None) -> list[str]:
    """`onnxruntime,tvm` -> ["onnxruntime", "tvm"]; None or "all" -> every registered backend."""
    if text is None or text.strip() == "all":
        return tuner_names()
    known = entries()
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise UserError(f"unknown backend {', '.join(unknown) or repr(text)}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def load_tuner(name: str) -> Tuner:
    """Import the backend's module (only now) and instantiate its class."""
    entry = entries()[name]
    module_name, _, class_name = entry.target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()
