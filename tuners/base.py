"""The one interface every backend implements.

A tuner says whether it can run on a target (and why not), proposes candidate configurations through an
ask/tell search within a budget, builds a candidate into a CompiledModel that the shared harness measures
(always inside an isolated child process), and exports a candidate as deployable files.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # the artifact runner imports this module with only numpy and one backend runtime installed
    from advisor.model import ModelInfo
    from hwprofiles.targets import Target


@dataclass(frozen=True)
class Capabilities:
    """What the rest of the advisor knows about a backend without importing it. Declared once, in the backend's
    registry entry (tuners/registry.py); read through the registry, never by testing a backend's name."""

    packages: tuple[str, ...] = ()  # distributions it runs on: reported in the run's environment and by versions()
    install_hint: str | None = None  # how to install them; None: derived from the entry's pip extra
    thread_setting: str | None = None  # config key with the threads one inference uses (0 or absent: all cores)
    portable_across_cpus: bool = True  # False: the deployable form is machine code for the CPU it was tuned on
    remote_devices: bool = False  # builds for and measures on a TVM RPC device (Target.rpc)
    any_batch: bool = True  # one build serves every batch size (False: builds are compiled for one shape)


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str | None = None  # why not, in words a user can act on

    @classmethod
    def yes(cls) -> Availability:
        return cls(True, None)

    @classmethod
    def no(cls, reason: str) -> Availability:
        return cls(False, reason)


@dataclass(frozen=True)
class Candidate:
    """One configuration of one backend on one target. `config` must be JSON-serialisable."""

    backend: str
    target: str
    config: Mapping[str, Any]

    @property
    def key(self) -> str:
        """Stable identity of the configuration: the same config always gets the same trial ids."""
        blob = json.dumps({"b": self.backend, "t": self.target, "c": self.config}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def trial_id(self, batch_size: int, phase: str = "search") -> str:
        return f"{self.backend}-{self.target.replace(':', '')}-{self.key}-b{batch_size}" + (
            "" if phase == "search" else f"-{phase}")


@dataclass(frozen=True)
class TuneContext:
    """What a tuner needs to search and build: the model, where it runs, where it may write, and for how long."""

    info: ModelInfo
    target: Target
    workdir: Path  # per-backend scratch folder inside the run folder (survives resume)
    cache_dir: Path  # persistent across runs (tuning databases, timing caches)
    budget_s: float  # this backend's share of --budget on this target
    tolerance: float  # max relative error against the fp32 reference for reduced-precision candidates
    batch_size: int = 1
    # SOURCE as the user gave it when it was not ONNX (a Hugging Face folder, a TorchScript/torch.export file, a
    # module:callable): backends that run the original framework load it rather than the exported ONNX
    source: str | None = None
    # calibration samples for static quantisation (advisor.sample_data.SampleSet saved as .npz in the run folder);
    # None: a backend that needs them calibrates on advisor.sample_data.synthetic_samples and says so
    calibration_path: Path | None = None


@dataclass(frozen=True)
class TrialOutcome:
    """What the search learns back about a candidate it asked for."""

    candidate: Candidate
    ok: bool
    latency_ms: float | None  # at the SLO percentile, None when the trial failed or was rejected


class Search(ABC):
    """An ask/tell search over one backend's configurations."""

    @abstractmethod
    def ask(self) -> list[Candidate]:
        """The next candidates to measure; an empty list ends the search."""

    @abstractmethod
    def tell(self, outcome: TrialOutcome) -> None:
        """Report one measured candidate back."""


class StagedSearch(Search):
    """Coordinate descent: each stage proposes variations of the best configuration found so far.

    A stage is a function (best_config) -> list of configs; duplicates of configs already measured are skipped.
    """

    def __init__(self, backend: str, target: str, baseline: Mapping[str, Any], stages):
        self.backend = backend
        self.target = target
        self._stages = list(stages)
        self._seen: set[str] = set()
        self._best: tuple[float, Mapping[str, Any]] | None = None
        self._pending: list[Candidate] = [Candidate(backend, target, dict(baseline))]

    @property
    def best_config(self) -> Mapping[str, Any] | None:
        return self._best[1] if self._best else None

    def ask(self) -> list[Candidate]:
        while not self._pending and self._stages:
            stage = self._stages.pop(0)
            base = self.best_config
            if base is None:
                return []  # even the baseline failed: nothing to vary
            self._pending = [Candidate(self.backend, self.target, dict(cfg)) for cfg in stage(dict(base))]
        batch = [c for c in self._pending if c.key not in self._seen]
        self._pending = []
        self._seen.update(c.key for c in batch)
        return batch

    def tell(self, outcome: TrialOutcome) -> None:
        if outcome.ok and outcome.latency_ms is not None:
            if self._best is None or outcome.latency_ms < self._best[0]:
                self._best = (outcome.latency_ms, dict(outcome.candidate.config))


class CompiledModel(ABC):
    """A built candidate, ready to run. `execute` must return only when the inference is complete."""

    details: dict[str, Any] = {}  # build facts worth reporting (build time, tuning trials, engine size, ...)

    @abstractmethod
    def bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Place the inputs where the model reads them (device memory for GPU backends)."""

    @abstractmethod
    def execute(self) -> None:
        """One inference on the bound inputs: the thing the harness times."""

    @abstractmethod
    def outputs(self) -> list[np.ndarray]:
        """The outputs of the last `execute`, on the host, in the model's output order."""

    def op_class_ms(self) -> dict[str, float]:
        """Time per inference by operator class (see advisor.opcost.op_class), where the backend can profile."""
        return {}


@dataclass(frozen=True)
class ExportedFiles:
    """What `Tuner.export` wrote: the files to deploy and the runtime settings a runner needs."""

    files: tuple[Path, ...]
    runtime: dict[str, Any] = field(default_factory=dict)  # backend-specific loading instructions
    requirements: tuple[str, ...] = ()  # pip requirements of the runner


class Tuner(ABC):
    """One backend. Subclasses live in one module each under tuners/ and are listed in tuners/registry.py."""

    name: ClassVar[str]

    @property
    def capabilities(self) -> Capabilities:
        """This backend's registry entry's declarations (the defaults when it is not registered)."""
        from tuners.registry import capabilities_of  # the registry imports this module

        return capabilities_of(self.name)

    def availability(self, target: Target) -> Availability:
        """Can this backend run on this target here and now? If not, the reason. Targets the registry entry says
        it cannot drive (a TVM RPC device, unless it declares remote_devices) are refused without asking it."""
        if target.rpc is not None and not self.capabilities.remote_devices:
            from tuners.registry import remote_backends

            return Availability.no(f"a TVM RPC device runs only code built for it by "
                                   f"{', '.join(remote_backends()) or 'a backend that declares remote devices'}")
        return self.probe(target)

    @abstractmethod
    def probe(self, target: Target) -> Availability:
        """Is this backend's runtime installed, and can it drive this target? (`availability` asks it.)"""

    def not_installed(self) -> Availability:
        """The unavailability of a backend whose packages are missing, with the entry's install hint."""
        from tuners.registry import install_hint_of

        package = self.capabilities.packages[0] if self.capabilities.packages else self.name
        hint = install_hint_of(self.name)
        return Availability.no(f"{package} is not installed" + (f" ({hint})" if hint else ""))

    @abstractmethod
    def search(self, ctx: TuneContext) -> Search:
        """The configurations to try on ctx.target, baseline first."""

    @abstractmethod
    def build(self, candidate: Candidate, ctx: TuneContext) -> CompiledModel:
        """Build (and, for compilers, tune) one candidate. Runs inside an isolated child process."""

    @abstractmethod
    def export(self, candidate: Candidate, ctx: TuneContext, dest: Path) -> ExportedFiles:
        """Write the candidate in deployable form into `dest`."""

    @abstractmethod
    def load_exported(self, folder: Path, runtime: dict[str, Any]) -> Callable[[Mapping[str, np.ndarray]], list]:
        """Load what `export` wrote, with only this backend's runtime; returns feeds -> outputs."""

    def versions(self) -> dict[str, str]:
        """Versions of the packages this backend uses, for the report and the artifact manifest: by default those
        of the entry's declared packages that are installed."""
        from importlib.metadata import PackageNotFoundError, version

        found = {}
        for package in self.capabilities.packages:
            try:
                found[package] = version(package)
            except PackageNotFoundError:
                continue
        return found
