"""`advisor package RUN_DIR --instance NAME [--out DEST]`: the deployable artifact for any ranked instance.

`advisor recommend` packages only the winner. A review meeting may pick the runner-up (another cloud, a spare
reservation), so this command rebuilds the artifact of any ranked row from the run folder alone: report.json says
which trial the row rests on, trials.jsonl holds that trial, and the model is re-analysed to rebuild the context the
trial was built in. Nothing is re-measured.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from advisor.errors import UserError

if TYPE_CHECKING:  # the heavy modules load only when the command runs, so `advisor --help` stays fast
    from advisor.config import RecommendConfig
    from advisor.model import ModelInfo
    from advisor.trials import Trial
    from hwprofiles.targets import Target

REPORT = "report.json"
ARTIFACTS = "artifacts"


@dataclass(frozen=True)
class RunRecord:
    """What a finished run folder says about itself: its report, and the user's input shapes from run.json."""

    path: Path
    report: dict
    input_shapes: dict[str, tuple[int, ...]]

    @property
    def report_path(self) -> Path:
        return self.path / REPORT


@dataclass(frozen=True)
class Packaged:
    """The result of packaging one instance: its ranking row, the trial it used, and where the artifact went."""

    row: dict
    trial_id: str
    percentile: str
    folder: Path
    tarball: Path


def read_run(run_dir: Path) -> RunRecord:
    """The run folder's report.json and recorded input shapes; a missing or unreadable one is a UserError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    report_path = run_dir / REPORT
    if not report_path.is_file():
        raise UserError(f"{run_dir} has no {REPORT}: not a finished advisor recommend run")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{report_path} is not valid JSON") from None
    if not isinstance(report, dict) or not isinstance(report.get("ranking"), list):
        raise UserError(f"{report_path} is not an advisor report (no ranking)")
    return RunRecord(run_dir, report, _recorded_shapes(run_dir))


def _recorded_shapes(run_dir: Path) -> dict[str, tuple[int, ...]]:
    """The --input-shape values of the run (run.json's fingerprint), so the model is analysed as it was."""
    try:
        fingerprint = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("fingerprint") or {}
        shapes = fingerprint.get("input_shapes") or {}
        return {str(name): tuple(int(d) for d in shape) for name, shape in shapes.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def find_row(run: RunRecord, instance: str) -> dict:
    """The ranking row of `instance`; excluded, unrankable and unknown instances are UserErrors saying why."""
    rows = [r for r in run.report["ranking"] if isinstance(r, dict)]
    row = next((r for r in rows if r.get("instance") == instance), None)
    if row is not None:
        if row.get("recommendable") is False:  # e.g. a GPU instance estimated from CPU runs: no GPU candidate exists
            why = row.get("not_recommendable_reason") or "its figure is too indirect to act on"
            raise UserError(f"instance {instance!r} has no candidate to package: {why}")
        if not row.get("trial_id"):
            raise UserError(f"instance {instance!r} has no candidate to package: its row names no trial")
        return row
    excluded = next((e for e in run.report.get("excluded") or [] if isinstance(e, dict)
                     and e.get("instance") == instance), None)
    if excluded is not None:
        raise UserError(f"instance {instance!r} has no candidate to package: it was not ranked "
                        f"({excluded.get('reason') or 'no reason recorded'})")
    names = [str(r.get("instance")) for r in rows]
    close = difflib.get_close_matches(instance, names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"ranked: {', '.join(names[:5])}" + (
        f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise UserError(f"unknown instance {instance!r}: {run.report_path} does not rank it ({hint})")


def _run_trials(run: RunRecord) -> list[Trial]:
    """Every trial of the run: those in trials.jsonl (the run's own log), then report.json's copies of any the log
    lacks."""
    from advisor.trials import Trial, TrialLog

    logged = TrialLog(run.path / "trials.jsonl").all() if (run.path / "trials.jsonl").exists() else []
    ids = {t.id for t in logged}
    return logged + [Trial.from_dict(t) for t in run.report.get("trials") or []
                     if isinstance(t, dict) and t.get("id") not in ids]


def _find_trial(run: RunRecord, trials: list[Trial], trial_id: str) -> Trial:
    """The trial a row rests on."""
    trial = next((t for t in trials if t.id == trial_id), None)
    if trial is None:
        raise UserError(f"trial {trial_id} is in neither {run.path / 'trials.jsonl'} nor {run.report_path}")
    return trial


def _targets(run: RunRecord) -> tuple[Target, ...]:
    from hwprofiles.targets import Target

    try:
        return tuple(Target.from_dict(t) for t in run.report.get("targets") or [])
    except (KeyError, TypeError):
        raise UserError(f"{run.report_path} has malformed targets") from None


def _model_path(run: RunRecord, override: Path | None) -> Path:
    if override is not None:
        return override
    recorded = (run.report.get("model") or {}).get("path")
    if recorded and Path(recorded).is_file():
        return Path(recorded).resolve()
    raise UserError(f"the model {recorded!r} recorded in {run.report_path} is not found; pass --model PATH")


def _model_info(run: RunRecord, override: Path | None) -> ModelInfo:
    """The ModelInfo of the run's model with the run's shapes; it must be the very model the run measured."""
    from advisor.model import ModelSpec, analyze

    path = _model_path(run, override)
    info = analyze(ModelSpec(path, dict(run.input_shapes)))
    if info.sha256 != (run.report.get("model") or {}).get("sha256"):
        raise UserError(f"{path} is not the model of this run (its sha256 differs from {run.report_path})")
    return info


def _config(run: RunRecord, info: ModelInfo) -> RecommendConfig:
    """A RecommendConfig carrying what a TuneContext needs from the run's settings (cache, budget, tolerance)."""
    from advisor.config import DEFAULT_BUDGET_S, DEFAULT_TOLERANCE, RecommendConfig, default_cache_dir
    from advisor.model import ModelSpec
    from advisor.slo import Slo

    settings = run.report.get("settings") or {}
    slo = run.report.get("slo") or {}
    return RecommendConfig(
        model=ModelSpec(info.path, dict(run.input_shapes)),
        slo=Slo(float(slo.get("latency_ms") or 0), str(slo.get("percentile") or "p99")),
        out_dir=run.path,
        budget_s=float(settings.get("budget_s") or DEFAULT_BUDGET_S),
        batch_size=settings.get("batch_size"),
        tolerance=float(settings.get("tolerance") or DEFAULT_TOLERANCE),
        cache_dir=Path(settings["cache_dir"]) if settings.get("cache_dir") else default_cache_dir(),
    )


def default_dest(run_dir: Path, instance: str) -> Path:
    """RUN_DIR/artifacts/INSTANCE, with the name made safe for a folder ("local (Xeon ...)" has spaces)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", instance).strip("-.") or "instance"
    return Path(run_dir) / ARTIFACTS / slug


def _check_dest(dest: Path) -> None:
    """DEST is replaced wholesale, so it must be empty, absent or a previous artifact, never any other folder."""
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--out {dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / "manifest.json").is_file():
        raise UserError(f"--out {dest} exists and is not an advisor artifact; choose another --out")


def _anchor_note(row: dict, targets: tuple[Target, ...]) -> str | None:
    """For an estimated row: which measured trial its figure is anchored on (that trial is what gets packaged)."""
    if row.get("source") != "estimated":
        return None
    target = next((t for t in targets if t.id == row.get("target")), None)
    label = target.label if target is not None else row.get("target")
    note = (f"{row['instance']}'s latency is a cost-model estimate anchored on trial {row['trial_id']} measured on "
            f"{label}; packaging that trial")
    if target is not None and row.get("estimate_relation") == "other_arch":
        # a compiled backend's library is built for the measured machine's architecture, not the instance's
        note += f" (built for {target.cpu.arch}, another architecture: run advisor verify on the instance)"
    return note


def package(run_dir: Path, instance: str, dest: Path | None = None, model: Path | None = None,
            notify: Callable[[str], None] | None = None) -> Packaged:
    """Build the artifact of `instance`'s ranking row from a finished run folder (locked while it works)."""
    from filelock import FileLock, Timeout

    from advisor.artifact import ArtifactRequest, build_artifact
    from advisor.pipeline import ARTIFACT_TIMEOUT_S, artifact_context, artifact_trial
    from advisor.runfolder import RunFolder
    from advisor.trials import TrialLog

    run = read_run(run_dir)
    row = find_row(run, instance)
    trials = _run_trials(run)
    trial = artifact_trial(row, [_find_trial(run, trials, row["trial_id"]), *trials])
    targets = _targets(run)
    if not any(t.id == trial.target for t in targets):
        raise UserError(f"trial {trial.id} ran on target {trial.target!r}, which {run.report_path} does not list")
    info = _model_info(run, model)
    config = _config(run, info)
    dest = Path(dest) if dest is not None else default_dest(run.path, instance)
    _check_dest(dest)
    lock = FileLock(str(run.path / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"another advisor run is using {run.path}; wait for it to finish") from None
    try:
        note = _anchor_note(row, targets)
        if note and notify:
            notify(note)  # only now: every refusal above must stay the one line it is
        folder = RunFolder(run.path, TrialLog(run.path / "trials.jsonl"), lock)
        ctx = artifact_context(trial, targets, info, config, folder)
        request = ArtifactRequest(trial, ctx, config.slo, dict(row))
        try:
            built = build_artifact(request, dest, timeout_s=ARTIFACT_TIMEOUT_S, log_path=folder.workers_log)
        except RuntimeError as error:
            raise UserError(f"{error} (backend output in {folder.workers_log})") from None
    finally:
        lock.release()
    return Packaged(row, trial.id, config.slo.percentile, built, built.with_name(built.name + ".tar.gz"))


@click.command(name="package")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--instance", required=True, help="The ranked instance to package, as named in the report.")
@click.option("--out", "dest", type=click.Path(path_type=Path), default=None,
              help="Artifact folder (default: RUN_DIR/artifacts/INSTANCE); a .tar.gz is written beside it.")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="The run's model, if it moved (default: the path recorded in report.json).")
def package_command(run_dir, instance, dest, model):
    """Build the deployable artifact for any ranked instance of a finished run, not only the recommended one.

    The artifact holds the configuration the instance's ranking row rests on (for an estimated row: the measured
    trial its estimate is anchored on), a manifest naming the instance, and a .tar.gz of it. Nothing is measured
    again; check it with `advisor verify`.

    Exit status: 0 packaged, 2 the run folder, instance or model cannot be used (one line saying why).
    """
    result = package(run_dir, instance, dest, model, notify=lambda text: click.echo(f"note: {text}", err=True))
    row = result.row
    low, high = (list(row.get("latency_ms_interval") or []) + [None, None])[:2]
    verdict = row.get("slo_verdict") or ("meets" if row.get("meets_slo") else "misses")
    click.echo(f"Packaged {row['instance']}: {row.get('backend')}, {row.get('source')}, trial {result.trial_id}, "
               f"{result.percentile} {_ms(row.get('latency_ms'))} ms [{_ms(low)}, {_ms(high)}], SLO: {verdict}")
    click.echo(f"Artifact: {result.folder}")
    click.echo(f"Tarball: {result.tarball}")
    click.echo(f"Check it with: advisor verify {result.folder}")


def _ms(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "?"
