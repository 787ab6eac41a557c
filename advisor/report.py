"""report.json (schema advisor.report/v1): the stable contract that the HTML report, the Markdown summary and
other tools read. Documented in docs/report-json.md; fields may be added, never renamed or removed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import advisor
from advisor.config import RecommendConfig
from advisor.environment import environment
from advisor.model import ModelInfo
from advisor.runfolder import write_json_atomic
from advisor.trials import Trial
from advisor.variants import precision_variants
from hwprofiles.targets import Target

SCHEMA = "advisor.report/v1"


@dataclass(frozen=True)
class BackendStatus:
    backend: str
    target: str
    available: bool
    reason: str | None
    versions: dict

    def to_dict(self) -> dict:
        return asdict(self)


def _op_class_ms(trials: list[Trial]) -> dict | None:
    """Where the time goes: the profile taken with the first (baseline) ONNX Runtime-style trial, if any."""
    for trial in trials:
        profile = trial.details.get("op_class_ms")
        if trial.ok and profile:
            return {"trial_id": trial.id, "ms": profile}
    return None


BYTES_BASIS = ("every byte the operators read and write, cache hits included: not DRAM traffic, so it can exceed "
               "the memory bandwidth peak")


def _roofline(info: ModelInfo, trials: list[Trial], targets: tuple[Target, ...], ranking) -> dict | None:
    """Achieved compute and bandwidth of the recommended trial when it ran on this machine's CPU at batch 1 (else
    the fastest solo local CPU trial there), against the machine's peaks."""
    cpu_trials = [t for t in trials if t.ok and t.target == "cpu" and t.batch_size == 1 and t.phase != "confirm"]
    if not cpu_trials:
        return None
    chosen = ranking.recommendation
    same = [t for t in cpu_trials if chosen is not None and t.backend == chosen.backend
            and dict(t.config) == chosen.config]
    best = min(same or cpu_trials, key=lambda t: (t.phase != "sweep", t.latency.p50))
    seconds = best.latency.p50 / 1000.0
    peaks = ranking.local_peaks
    return {"machine": targets[0].label, "trial_id": best.id,
            "achieved_gflops": info.flops / seconds / 1e9 if seconds > 0 else None,
            "achieved_bandwidth_gbs": info.bytes_moved / seconds / 1e9 if seconds > 0 else None,
            "bytes_basis": BYTES_BASIS,
            "arithmetic_intensity": info.flops / info.bytes_moved if info.bytes_moved else None,
            "peak_gflops": peaks.get("peak_gflops"), "peak_bandwidth_gbs": peaks.get("peak_bandwidth_gbs")}


def run_status(recommendation: dict | None, trials: list[Trial]) -> str:
    """recommended | no_slo_met (candidates were measured, none meets) | no_valid_candidate (none could be measured:
    every one failed to build, crashed, timed out or failed its numerical check)."""
    if recommendation is not None:
        return "recommended"
    return "no_slo_met" if any(t.ok for t in trials) else "no_valid_candidate"


def build_report(*, info: ModelInfo, config: RecommendConfig, targets: tuple[Target, ...], statuses: list,
                 trials: list[Trial], ranking, artifact_path: Path | None, artifact_error: str | None,
                 started_at: str, export: dict | None = None) -> dict:
    ranking_dict = ranking.to_dict()
    recommendation = None
    if ranking.recommendation is not None:
        row = ranking.recommendation.to_dict()
        rows = ranking_dict.get("rows", [])
        # the runner-up is the next instance that meets the SLO at the same or a higher cost (a cheaper estimated
        # row can sit above a measured winner that won a near-tie)
        runner_up = next((r for r in rows if r.get("meets_slo") and r["instance"] != row["instance"]
                          and (r.get("cost_per_million") or 0) >= (row.get("cost_per_million") or 0)), None)
        recommendation = {**row, "artifact": str(artifact_path) if artifact_path else None,
                          "artifact_error": artifact_error, "runner_up": runner_up,
                          "why": _why(row, runner_up)}
    model = info.summary_dict()
    profile = _op_class_ms(trials)
    model["op_class_ms"] = profile["ms"] if profile else None
    if export is not None:  # SOURCE was not ONNX: how it was exported, and how close the export is to the source
        model["export"] = export
    return {
        "schema": SCHEMA,
        "advisor_version": advisor.__version__,
        "status": run_status(recommendation, trials),
        "model": model,
        "slo": config.slo.to_dict(),
        "settings": config.settings_dict(),
        "targets": [t.to_dict() for t in targets],
        "backends": [s.to_dict() for s in statuses],
        "trials": [t.to_dict() for t in trials],
        "ranking": ranking_dict.get("rows", []),
        "excluded": ranking_dict.get("excluded", []),
        "not_measured": ranking_dict.get("not_measured", []),
        "pareto": ranking_dict.get("pareto", []),
        "recommendation": recommendation,
        "closest_miss": ranking.closest_miss.to_dict() if ranking.closest_miss else None,
        "roofline": _roofline(info, trials, targets, ranking),
        "precision_variants": precision_variants(trials, config.settings_dict()),
        "costmodel": ranking_dict.get("costmodel", {}),
        "environment": environment(targets, started_at),
    }


def _why(row: dict, runner_up: dict | None) -> str:
    if runner_up is None:
        return "the only instance that meets the SLO"
    cost, other = row.get("cost_per_million"), runner_up.get("cost_per_million")
    if cost is not None and other:
        return (f"{(1 - cost / other) * 100:.0f}% cheaper per million inferences than {runner_up['instance']} "
                f"(${other:.4g}), both meeting the SLO")
    return f"cheaper than {runner_up['instance']} while meeting the SLO"


def write_report(report: dict, run_dir: Path, json_copy: Path | None) -> dict[str, Path]:
    """report.json, then the HTML and Markdown renderings of it, atomically; and the --json copy."""
    from reports.render import write_reports

    paths = {"json": run_dir / "report.json"}
    write_json_atomic(paths["json"], report)
    paths.update(write_reports(report, run_dir))
    if json_copy is not None:
        json_copy.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_copy, report)
    return paths
