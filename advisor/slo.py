"""The latency SLO and the verdict on one latency figure: meets, borderline or misses, with the margin."""

from __future__ import annotations

from dataclasses import dataclass

from advisor.errors import UserError

PERCENTILE_CHOICES = ("p50", "p90", "p95", "p99")


@dataclass(frozen=True)
class Slo:
    latency_ms: float
    percentile: str = "p99"

    def __post_init__(self):
        if not self.latency_ms > 0:
            raise UserError(f"the SLO must be a positive latency, got {self.latency_ms}")
        if self.percentile not in PERCENTILE_CHOICES:
            raise UserError(f"percentile must be one of {', '.join(PERCENTILE_CHOICES)}, got {self.percentile!r}")

    def to_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "percentile": self.percentile}


@dataclass(frozen=True)
class SloVerdict:
    """`meets` when the whole interval is within the SLO; `borderline` when only the point estimate is."""

    verdict: str  # "meets" | "borderline" | "misses"
    margin_ms: float  # SLO minus point estimate: positive is headroom, negative is by how much it misses
    margin_fraction: float  # margin_ms / SLO

    @property
    def meets(self) -> bool:
        return self.verdict == "meets"


def judge(slo: Slo, latency_ms: float, interval: tuple[float, float]) -> SloVerdict:
    margin = slo.latency_ms - latency_ms
    if interval[1] <= slo.latency_ms:
        verdict = "meets"
    elif latency_ms <= slo.latency_ms:
        verdict = "borderline"
    else:
        verdict = "misses"
    return SloVerdict(verdict, margin, margin / slo.latency_ms)
