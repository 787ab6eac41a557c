"""The one list of backends: name -> implementing class, pip extra and budget weight.

Modules are imported lazily so `advisor --help` stays fast and works without TVM or TensorRT installed.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from advisor.errors import UserError
from tuners.base import Tuner


@dataclass(frozen=True)
class TunerEntry:
    name: str
    target: str  # "module:Class"
    extra: str | None  # pip extra that installs its dependencies
    budget_weight: float  # share of the tuning budget relative to the other backends on the same target
    description: str
    any_batch: bool = True  # one build serves every batch size (False: builds are compiled for one shape)


TUNERS: dict[str, TunerEntry] = {
    entry.name: entry
    for entry in (
        TunerEntry("onnxruntime", "tuners.onnxruntime:OnnxRuntimeTuner", None, 1.0,
                   "ONNX Runtime: execution providers, graph optimisation, threads, dynamic int8"),
        TunerEntry("tvm", "tuners.tvm:TvmTuner", "tvm", 2.0,
                   "Apache TVM: Relax import, default build and MetaSchedule tuning with a persistent database",
                   any_batch=False),
        TunerEntry("tensorrt", "tuners.tensorrt:TensorRtTuner", "tensorrt", 1.0, "NVIDIA TensorRT engines",
                   any_batch=False),
    )
}


def _plugins(spec: str) -> dict[str, TunerEntry]:
    """Backends outside this package: ADVISOR_TUNERS="name=module:Class,..." (read by workers too)."""
    entries = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, target = item.partition("=")
        if not name or ":" not in target:
            raise UserError(f"ADVISOR_TUNERS entry {item!r} is not NAME=module:Class")
        entries[name] = TunerEntry(name, target, None, 1.0, f"plugin {target}")
    return entries


TUNERS.update(_plugins(os.environ.get("ADVISOR_TUNERS", "")))


def accepts_any_batch(name: str) -> bool:
    """Whether a build of this backend serves batch sizes it was not measured at (sizing may then interpolate)."""
    entry = TUNERS.get(name)
    return entry.any_batch if entry else True


def tuner_names() -> list[str]:
    return list(TUNERS)


def parse_backends(text: str | None) -> list[str]:
    """`onnxruntime,tvm` -> ["onnxruntime", "tvm"]; None or "all" -> every registered backend."""
    if text is None or text.strip() == "all":
        return tuner_names()
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in TUNERS]
    if unknown or not names:
        raise UserError(f"unknown backend {', '.join(unknown) or repr(text)}; choose from {', '.join(TUNERS)}")
    return list(dict.fromkeys(names))


def load_tuner(name: str) -> Tuner:
    entry = TUNERS[name]
    module_name, _, class_name = entry.target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()
