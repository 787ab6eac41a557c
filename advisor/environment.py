"""The environment a run happened in, so a reader can reproduce it."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import platform
import socket

import advisor
from hwprofiles.targets import Target
from tuners.registry import declared_packages

# what every run uses besides the backends (the reference, model analysis, export, cluster); each backend's own
# packages are declared in its registry entry (tuners/registry.py)
CORE_PACKAGES = ("onnx", "onnxruntime", "onnxslim", "numpy", "scikit-learn", "torch", "transformers", "optimum",
                 "ray")


def packages() -> list[str]:
    return list(dict.fromkeys((*CORE_PACKAGES, *declared_packages())))


def package_versions() -> dict[str, str]:
    """Installed versions of the core packages and of every registered backend's declared packages."""
    versions = {}
    for name in packages():
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def environment(targets: tuple[Target, ...], started_at: str) -> dict:
    cpu = targets[0].cpu
    return {
        "advisor": advisor.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "cpu": f"{cpu.model}, {cpu.physical_cores} cores, {cpu.microarchitecture}, {' '.join(cpu.isa)}",
        "cpu_info": cpu.to_dict(),
        "gpus": [t.gpu.to_dict() for t in targets if t.gpu is not None],
        "hostname_hash": hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16],
        "started_at": started_at,
        "finished_at": now_iso(),
    }
