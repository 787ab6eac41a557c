"""`advisor recommend` as one function: ModelInfo -> targets -> tuned trials -> ranking -> report + artifact."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psutil

from advisor.artifact import ArtifactRequest, build_artifact
from advisor.config import RecommendConfig
from advisor.environment import now_iso
from advisor.errors import UserError
from advisor.model import ModelInfo, analyze
from advisor.progress import Progress
from advisor.report import BackendStatus, build_report, write_report
from advisor.runfolder import RunFolder
from advisor.trials import Trial
from advisor.tuning import BackendTuning, Deadline, best_trial
from hwprofiles.catalog import load_catalog
from hwprofiles.targets import Target, detect_targets
from tuners.base import TuneContext, Tuner
from tuners.registry import TUNERS, load_tuner, tuner_names

SEARCH_SHARE = 0.7  # of --budget; the rest goes to the head-to-head and the batch sweep
EXIT_RECOMMENDED = 0
EXIT_NO_SLO_MET = 3

log = logging.getLogger("advisor")


@dataclass(frozen=True)
class RunResult:
    report: dict
    exit_code: int
    run_dir: Path


def _sweep_sizes(info: ModelInfo, config: RecommendConfig) -> list[int]:
    if not info.batch_axis:
        return [1]
    return sorted(set(config.batch_sizes) | {config.slo_batch_size})


def _attach_file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _pairs(config: RecommendConfig, targets: tuple[Target, ...]) -> tuple[list[tuple[Tuner, Target]], list]:
    """Every (backend, target) that can run here, and the status of every one, available or not."""
    names = list(config.backends) or tuner_names()
    runnable, statuses = [], []
    for name in names:
        tuner = load_tuner(name)
        for target in targets:
            availability = tuner.availability(target)
            versions = tuner.versions() if availability.available else {}
            statuses.append(BackendStatus(name, target.id, availability.available, availability.reason, versions))
            if availability.available:
                runnable.append((tuner, target))
    return runnable, statuses


def recommend(config: RecommendConfig, progress: Progress | None = None) -> RunResult:
    progress = progress or Progress()
    progress.stage("analysing the model")
    info = analyze(config.model)
    catalog = load_catalog(list(config.catalog_paths), providers=list(config.providers) or None,
                           region=config.region)
    run = RunFolder.open(config.out_dir, config.resume, config.fingerprint(info.sha256))
    handler = _attach_file_log(run.log_path)
    try:
        return _recommend_in(run, info, catalog, config, progress)
    except Exception as error:
        if not isinstance(error, UserError):
            log.exception("internal error")
            error.advisor_log_path = run.log_path  # the CLI points the user at it
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
        run.close()


def _recommend_in(run: RunFolder, info: ModelInfo, catalog, config: RecommendConfig, progress: Progress) -> RunResult:
    started_at = now_iso()
    targets = detect_targets()
    log.info("targets: %s", [t.label for t in targets])
    pairs, statuses = _pairs(config, targets)
    info.shapes_at(config.slo_batch_size)  # a fixed-batch model cannot take --batch N: fail before tuning
    memory_limit = config.memory_limit_mib or psutil.virtual_memory().total / 2**20 * 0.8

    weights = [TUNERS[tuner.name].budget_weight for tuner, _ in pairs]
    search_deadline_total = config.budget_s * SEARCH_SHARE
    overall = Deadline.after(config.budget_s)
    tunings: list[BackendTuning] = []
    for tuner, target in pairs:
        share = search_deadline_total * TUNERS[tuner.name].budget_weight / max(sum(weights), 1e-9)
        ctx = TuneContext(info=info, target=target, workdir=run.backend_dir(tuner.name, target.id),
                          cache_dir=config.cache_dir, budget_s=share, tolerance=config.tolerance,
                          batch_size=config.slo_batch_size)
        tunings.append(BackendTuning(tuner, ctx, run, info, config.slo, config.harness, memory_limit, progress))

    trials: list[Trial] = []
    for tuning in tunings:
        progress.stage(f"tuning {tuning.tuner.name} on {tuning.ctx.target.label}")
        # each backend's search gets its share, plus whatever earlier backends left unused
        share_deadline = Deadline.after(min(tuning.ctx.budget_s + _unused(tunings, tuning, trials),
                                            overall.remaining))
        searched = tuning.search(share_deadline)
        trials += searched
        confirm_deadline = Deadline.after(min(overall.remaining, max(10.0, overall.remaining / 2)))
        trials += tuning.confirm(searched, confirm_deadline)
        best = best_trial([t for t in trials if t.backend == tuning.tuner.name and t.target == tuning.ctx.target.id],
                          config.slo.percentile)
        if best is not None:
            progress.stage(f"batch-size sweep of the best {tuning.tuner.name} candidate")
            trials += tuning.sweep(best, _sweep_sizes(info, config), Deadline.after(overall.remaining + 30))

    progress.stage("ranking instances")
    from advisor.ranking import RankingInputs, rank

    ranking = rank(RankingInputs(info=info, trials=trials, targets=targets, catalog=catalog, slo=config.slo,
                                 qps=config.qps, utilisation=config.utilisation,
                                 local_price_per_hour=config.local_price_per_hour, batch_size=config.batch_size))
    artifact_path = None
    artifact_error = None
    if ranking.recommendation is not None and config.make_artifact:
        progress.stage("exporting the artifact")
        chosen = next(t for t in trials if t.id == ranking.recommendation.trial_id)
        tuning = next(t for t in tunings if t.tuner.name == chosen.backend and t.ctx.target.id == chosen.target)
        request = ArtifactRequest(chosen, tuning.ctx, config.slo, ranking.recommendation.to_dict())
        try:
            artifact_path = build_artifact(request, run.path / "artifact", timeout_s=600 + tuning.ctx.budget_s,
                                           log_path=run.workers_log)
        except RuntimeError as error:
            artifact_error = str(error)
            log.error("artifact: %s", error)
    report = build_report(info=info, config=config, targets=targets, statuses=statuses, trials=trials,
                          ranking=ranking, artifact_path=artifact_path, artifact_error=artifact_error,
                          started_at=started_at)
    write_report(report, run.path, config.json_path)
    exit_code = EXIT_RECOMMENDED if ranking.recommendation is not None else EXIT_NO_SLO_MET
    return RunResult(report, exit_code, run.path)


def _unused(tunings: list[BackendTuning], current: BackendTuning, trials: list[Trial]) -> float:
    """Budget earlier backends were given but did not spend (they finished their search early)."""
    unused = 0.0
    for tuning in tunings:
        if tuning is current:
            break
        spent = sum(t.duration_s for t in trials if t.backend == tuning.tuner.name and t.phase == "search"
                    and t.target == tuning.ctx.target.id)
        unused += max(0.0, tuning.ctx.budget_s - spent)
    return unused
