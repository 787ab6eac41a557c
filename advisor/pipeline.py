"""`advisor recommend` as one function: ModelInfo -> targets -> tuned trials -> ranking -> report + artifact."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from advisor.accuracy import AccuracyGate, prepare_gate, resolve_metric
from advisor.artifact import ArtifactRequest, build_artifact
from advisor.config import RecommendConfig
from advisor.environment import now_iso
from advisor.errors import UserError
from advisor.exporting import run_export
from advisor.model import ModelInfo, ModelSpec, analyze
from advisor.progress import Progress
from advisor.report import build_report, write_report
from advisor.runfolder import RunFolder
from advisor.ranking import RankingInputs, rank
from advisor.trials import Trial
from advisor.sample_data import SampleSet, load_calibration_data, load_eval_data
from advisor.sample_data import save as save_samples
from advisor.tuning import Deadline, calibration_path, tune_targets, tuning_inputs
from hwprofiles.catalog import load_catalog
from hwprofiles.targets import Target, detect_targets
from tuners.base import TuneContext

ARTIFACT_TIMEOUT_S = 1800.0  # compilers rebuild from their tuning records; that can take a while on 2 cores
MIN_ARTIFACT_TIMEOUT_S = 15.0
REPORT_RESERVE_S = 3.0  # ranking and rendering after the artifact
EVAL_REFERENCE_TIMEOUT_S = 300.0  # the fp32 reference's pass over --eval-data
EXIT_RECOMMENDED = 0
EXIT_NO_SLO_MET = 3
EXIT_NO_VALID_CANDIDATE = 4
EXIT_CODES = {"recommended": EXIT_RECOMMENDED, "no_slo_met": EXIT_NO_SLO_MET,
              "no_valid_candidate": EXIT_NO_VALID_CANDIDATE}

log = logging.getLogger("advisor")


@dataclass(frozen=True)
class RunResult:
    report: dict
    exit_code: int
    run_dir: Path


def _attach_file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def recommend(config: RecommendConfig, progress: Progress | None = None) -> RunResult:
    progress = progress or Progress()
    with run_export.prepare(config.export, config.model.path, config.resume) as export:  # None for ONNX sources
        return _recommend(config, progress, export)


def _recommend(config: RecommendConfig, progress: Progress, export: run_export.RunExport | None) -> RunResult:
    started = time.monotonic()  # --budget counts from here: analysis, tuning, ranking, the artifact and the report
    config, spec = _with_export(config, export)
    # validation first, silently: a bad input must produce exactly one line on stderr
    info = analyze(spec)
    catalog = load_catalog(list(config.catalog_paths), providers=list(config.providers) or None,
                           region=config.region)
    remote = _remote_targets(config)  # before the run folder: an unreachable device is one line, no folder
    user_data = UserData.load(config, info)
    run = RunFolder.open(config.out_dir, config.resume, config.fingerprint(info.sha256, user_data.digests()))
    handler = _attach_file_log(run.log_path)
    try:
        if export is not None:
            export.install(run_export.source_key(config.export.source))
            info = replace(info, path=export.result.onnx_path)  # it was analysed where it was staged
            _log_export(export, progress)
        return _recommend_in(run, info, catalog, config, progress, export, remote, Deadline(started + config.budget_s),
                             user_data)
    except Exception as error:
        if not isinstance(error, UserError):
            log.exception("internal error")
            error.advisor_log_path = run.log_path  # the CLI points the user at it
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
        run.close()


@dataclass(frozen=True)
class UserData:
    """--calibration-data and --eval-data, loaded and checked against the model before the run folder opens."""

    calibration: SampleSet | None = None
    evaluation: SampleSet | None = None

    @classmethod
    def load(cls, config: RecommendConfig, info: ModelInfo) -> UserData:
        calibration = load_calibration_data(config.calibration_data, info) if config.calibration_data else None
        evaluation = load_eval_data(config.eval_data, info) if config.eval_data else None
        if evaluation is not None:
            resolve_metric(config.eval_metric, evaluation)  # a metric that cannot be imported is one line now
        return cls(calibration, evaluation)

    def digests(self) -> dict:
        return {name: data.digest() for name, data in (("calibration", self.calibration),
                                                        ("eval", self.evaluation)) if data is not None}

    def install(self, run: RunFolder, info: ModelInfo, config: RecommendConfig, deadline: Deadline
                ) -> AccuracyGate | None:
        """Save the samples where the workers read them; the accuracy gate with its fp32 reference value."""
        if self.calibration is not None:
            save_samples(self.calibration, calibration_path(run))
        if self.evaluation is None:
            return None
        eval_path = save_samples(self.evaluation, run.data_dir / "eval.npz")
        gate = prepare_gate(info.path, eval_path, config.eval_metric, config.accuracy_drop,
                            timeout_s=max(30.0, min(EVAL_REFERENCE_TIMEOUT_S, deadline.remaining)),
                            log_path=run.workers_log)
        log.info("accuracy gate: %s of the fp32 reference on %d eval samples = %.6g, max drop %.4g",
                 gate.metric_name, len(self.evaluation), gate.reference_value, gate.max_drop)
        return gate


def _with_export(config: RecommendConfig, export: run_export.RunExport | None) -> tuple[RecommendConfig, ModelSpec]:
    """The config the rest of the run sees and the model to analyse now. For an exported model, --input-shape is
    spread over the inputs that share its named axes (`input_ids=1,128` sizes `attention_mask`'s `sequence` too),
    and analysis reads the staged file until it is moved into the run folder."""
    if export is None:
        return config, config.model
    shapes = run_export.fill_named_axes(export.analysis_path, dict(config.model.input_shapes))
    config = replace(config, model=ModelSpec(config.model.path, shapes))
    return config, ModelSpec(export.analysis_path, shapes)


def _log_export(export: run_export.RunExport, progress: Progress) -> None:
    result = export.result
    log.info("export: %s", export.report_dict())
    progress.stage(f"exported {result.source} ({result.source_kind}) with {result.exporter}: "
                   f"{result.error_text()} vs the source")


def _remote_targets(config: RecommendConfig) -> tuple[Target, ...]:
    """Devices named on the command line (--tvm-rpc), checked and described now."""
    if config.tvm_rpc is None:
        return ()
    from tuners.tvm_rpc import remote_target

    return (remote_target(config.tvm_rpc),)


def _recommend_in(run: RunFolder, info: ModelInfo, catalog, config: RecommendConfig, progress: Progress,
                  export: run_export.RunExport | None = None, remote: tuple[Target, ...] = (),
                  deadline: Deadline | None = None, user_data: UserData | None = None) -> RunResult:
    started_at = now_iso()
    deadline = deadline or Deadline.after(config.budget_s)
    progress.stage(f"{info.path.name}: {info.flops / 1e9:.3g} GFLOP, {info.params / 1e6:.3g} M parameters; "
                   f"run folder {run.path}")
    # devices the user named come first, so a tight --budget is spent on them before this machine
    targets = remote + detect_targets()
    log.info("targets: %s", [t.label for t in targets])
    info.shapes_at(config.slo_batch_size)  # a fixed-batch model cannot take --batch N: fail before tuning
    accuracy = (user_data or UserData()).install(run, info, config, deadline)
    outcome = tune_targets(run, info, config, targets, progress, deadline, accuracy)
    trials, statuses = outcome.trials, outcome.statuses
    if config.cluster:
        from advisor.cluster import tune_on_cluster

        remote = tune_on_cluster(run, info, config, progress)
        trials += remote.trials
        statuses += remote.statuses
        targets = targets + remote.targets

    progress.stage("ranking instances")
    ranking = rank(RankingInputs(info=info, trials=trials, targets=targets, catalog=catalog, slo=config.slo,
                                 qps=config.qps, utilisation=config.utilisation,
                                 local_price_per_hour=config.local_price_per_hour, batch_size=config.batch_size))
    artifact_path = None
    artifact_error = None
    if ranking.recommendation is not None and config.make_artifact:
        progress.stage("exporting the artifact")
        chosen = artifact_trial(ranking.recommendation.to_dict(), trials)
        ctx = artifact_context(chosen, targets, info, config, run)
        request = ArtifactRequest(chosen, ctx, config.slo, ranking.recommendation.to_dict())
        try:
            artifact_path = build_artifact(request, run.path / "artifact",
                                           timeout_s=_artifact_timeout(config, deadline),
                                           log_path=run.workers_log)
        except RuntimeError as error:
            artifact_error = str(error)
            log.error("artifact: %s", error)
    report = build_report(info=info, config=config, targets=targets, statuses=statuses, trials=trials,
                          ranking=ranking, artifact_path=artifact_path, artifact_error=artifact_error,
                          started_at=started_at, export=export.report_dict() if export else None)
    write_report(report, run.path, config.json_path)
    run.mark_finished()
    exit_code = EXIT_CODES[report["status"]]
    return RunResult(report, exit_code, run.path)




def _artifact_timeout(config: RecommendConfig, deadline: Deadline) -> float:
    """What is left of --budget plus its 20 % tolerance (the tuning stopped at ARTIFACT_SHARE before the end), less
    the report's few seconds, and never less than MIN_ARTIFACT_TIMEOUT_S: a bound on the whole run, so a build
    that needs longer fails with the reason (`artifact_error`) instead of overrunning it."""
    return min(ARTIFACT_TIMEOUT_S,
               max(MIN_ARTIFACT_TIMEOUT_S, deadline.remaining + 0.2 * config.budget_s - REPORT_RESERVE_S))


def artifact_trial(row: dict, trials: list[Trial]) -> Trial:
    """The trial to package for a ranking row. A backend whose builds are compiled for one shape (TVM, TensorRT)
    is packaged from its trial at the batch size the row was sized at, when one was measured: that is the
    build that serves the sized load. Otherwise the row's own trial (any batch size runs on it)."""
    from tuners.registry import accepts_any_batch

    own = next(t for t in trials if t.id == row["trial_id"])
    if accepts_any_batch(own.backend) or row.get("batch_size") in (None, own.batch_size):
        return own
    return next((t for t in trials if t.ok and t.backend == own.backend and t.target == own.target
                 and t.config == own.config and t.batch_size == row["batch_size"]), own)


def artifact_context(trial: Trial, targets: tuple[Target, ...], info: ModelInfo, config: RecommendConfig,
                     run: RunFolder) -> TuneContext:
    """The context a trial was built in, to export it again (also for cluster-measured trials)."""
    target = next(t for t in targets if t.id == trial.target)
    return TuneContext(info=info, target=target, workdir=run.backend_dir(trial.backend, target.id),
                       cache_dir=config.cache_dir, budget_s=config.budget_s, tolerance=config.tolerance,
                       batch_size=trial.batch_size, **tuning_inputs(config, run))
