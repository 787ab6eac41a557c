"""Trials (one measured candidate at one batch size) and the append-only log that makes runs resumable."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from advisor.measure import LatencyStats

STATUSES = ("ok", "failed", "rejected", "skipped")


@dataclass(frozen=True)
class Trial:
    id: str
    backend: str
    target: str
    config: Mapping[str, Any]
    batch_size: int
    status: str  # ok | failed (crashed, timed out, could not build) | rejected (numerically wrong) | skipped
    reason: str | None = None
    latency: LatencyStats | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    tolerance: float | None = None  # the relative error this trial's outputs were allowed (calibrated per model)
    fp32_noise_floor: float | None = None  # how far legitimate fp32 executions of the model differ from each other
    phase: str = "search"  # search | confirm (interleaved head-to-head) | sweep (batch sizes)
    details: Mapping[str, Any] = field(default_factory=dict)  # build/tuning facts from the backend
    peak_rss_mib: float | None = None
    duration_s: float = 0.0  # wall time of build + measurement

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown trial status {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.latency is not None

    def latency_at(self, percentile: str) -> float | None:
        return self.latency.at(percentile) if self.latency else None

    def throughput_per_s(self) -> float | None:
        return self.batch_size * 1000.0 / self.latency.mean if self.latency and self.latency.mean > 0 else None

    def with_status(self, status: str, reason: str | None) -> Trial:
        return replace(self, status=status, reason=reason)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "backend": self.backend, "target": self.target, "config": dict(self.config),
            "batch_size": self.batch_size, "status": self.status, "reason": self.reason,
            "latency_ms": self.latency.to_dict() if self.latency else None,
            "throughput_per_s": self.throughput_per_s(),
            "max_abs_error": _finite(self.max_abs_error), "max_rel_error": _finite(self.max_rel_error),
            "tolerance": self.tolerance, "fp32_noise_floor": self.fp32_noise_floor,
            "phase": self.phase, "details": dict(self.details), "peak_rss_mib": self.peak_rss_mib,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trial:
        return cls(
            id=data["id"], backend=data["backend"], target=data["target"], config=dict(data["config"]),
            batch_size=int(data["batch_size"]), status=data["status"], reason=data.get("reason"),
            latency=LatencyStats.from_dict(data["latency_ms"]) if data.get("latency_ms") else None,
            max_abs_error=data.get("max_abs_error"), max_rel_error=data.get("max_rel_error"),
            tolerance=data.get("tolerance"), fp32_noise_floor=data.get("fp32_noise_floor"), phase=data.get("phase", "search"), details=dict(data.get("details") or {}),
            peak_rss_mib=data.get("peak_rss_mib"), duration_s=float(data.get("duration_s") or 0.0),
        )


class TrialLog:
    """trials.jsonl: one JSON line per finished trial, flushed and fsynced as it is written.

    A run killed mid-write leaves at most one torn last line, which reading skips (and the next append
    starts on a fresh line), so resuming loses nothing that was finished.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._trials: dict[str, Trial] = {}
        if self.path.exists():
            for trial in self._read():
                self._trials[trial.id] = trial

    def _read(self) -> Iterable[Trial]:
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    yield Trial.from_dict(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn or foreign line: the trial it held was not finished

    def get(self, trial_id: str) -> Trial | None:
        return self._trials.get(trial_id)

    def __contains__(self, trial_id: str) -> bool:
        return trial_id in self._trials

    def __len__(self) -> int:
        return len(self._trials)

    def all(self) -> list[Trial]:
        return list(self._trials.values())

    def append(self, trial: Trial) -> None:
        line = json.dumps(trial.to_dict(), sort_keys=True, allow_nan=False, default=str)
        needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(("\n" if needs_newline else "") + line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._trials[trial.id] = trial


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: a non-finite error (shape mismatch, NaN outputs) is stored as null."""
    return value if value is None or math.isfinite(value) else None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
