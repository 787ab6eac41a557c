"""Driving the backends on one target: the ask/tell search of each backend, one head-to-head of the best
candidates of every backend against the stock baseline, a winner chosen on statistics, and the batch-size sweep
of the winner and the baseline under one protocol. Every trial goes through the run folder's log first, so a
resumed run re-measures nothing it already has.

Protocols, one per purpose:
- search: each candidate alone in a fresh child (solo); candidates hopelessly slower than the best so far on the
  target are stopped early, and a candidate clearly slower than its backend's baseline is discarded;
- confirm: the finalists in one child, one at a time in alternating rounds (no thread pool left spinning between
  them); it only decides the winner: a challenger wins when it is faster than the baseline beyond the interval of
  the paired difference, and ties go to the baseline (the stock configuration);
- sweep: the winner and the baseline alone in fresh children at every batch size, the SLO's included: these are
  the figures the ranking uses, so a latency curve never mixes protocols. The winner's solo figure is checked
  against its head-to-head figure and a disagreement beyond both intervals is flagged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import psutil

from advisor.accuracy import AccuracyGate
from advisor.config import RecommendConfig
from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, run_job
from advisor.measure import HarnessSettings
from advisor.model import ModelInfo
from advisor.progress import Progress
from advisor.report import BackendStatus
from advisor.runfolder import RunFolder
from advisor.slo import Slo
from advisor.trials import Trial
from hwprofiles.targets import Target
from tuners.base import Candidate, TrialOutcome, TuneContext, Tuner
from tuners.registry import TUNERS, accepts_any_batch, load_tuner, tuner_names

SEARCH_SHARE = 0.6  # of the tuning deadline; the rest goes to the head-to-heads and the batch sweeps
ARTIFACT_SHARE = 0.1  # of --budget, kept for the artifact export after tuning
CONFIRM_TOP = 3  # candidates (besides the baseline) re-measured head to head
WORKER_STARTUP_S = 120.0  # slack on each worker's time-out for process start, imports and compilation
WORKER_START_S = 1.5  # a worker's start, imports and a small build, as seen on 2 cores: kept off its timing time
HOPELESS_FACTOR = 5.0  # a candidate whose calls all take this many times the best median so far is stopped early
DISCARD_MARGIN = 1.25  # slower than the baseline by more than run-to-run noise between processes (10-20 %)
WORKER_GRACE_SHARE = 0.05  # of the tuning time: how far a worker may run past its phase's deadline


@dataclass
class Deadline:
    """Wall-clock budget; `remaining` never goes below zero."""

    end: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @property
    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining <= 0


@dataclass
class Measurer:
    """Runs MeasureJobs for one target through the run folder's log (reusing logged trials) within the run's
    overall deadline."""

    run: RunFolder
    info: ModelInfo
    harness: HarnessSettings
    memory_limit_mib: float | None
    progress: Progress
    overall: Deadline
    timeout_s: float | None = None  # fixed per-worker time-out (--trial-timeout)
    grace_s: float = 5.0  # how far a worker may run past its phase's deadline
    accuracy: AccuracyGate | None = None  # --eval-data: applied where candidates are first judged (the search)
    replay_only: bool = False  # a finished run resumed: logged trials only, nothing measured

    def limits(self, contexts: Sequence[TuneContext], harness: HarnessSettings, deadline: Deadline) -> ExecutionLimits:
        timeout = self.timeout_s or (WORKER_STARTUP_S + max(c.budget_s for c in contexts)
                                     + len(contexts) * (harness.max_time_s + 30))
        # nothing runs far past its phase's deadline (so --budget bounds the run): a worker still busy then is
        # stopped and recorded as timed out
        timeout = min(timeout, min(deadline.remaining, self.overall.remaining) + self.grace_s)
        return ExecutionLimits(max(timeout, 1.0), self.memory_limit_mib, self.run.workers_log)

    def measure(self, candidates: list[Candidate], contexts: list[TuneContext], phase: str, batch_size: int,
                deadline: Deadline, harness: HarnessSettings, *, profile: bool = False, baseline: int | None = None,
                percentile: str = "p99", hopeless_ms: float | None = None,
                review: Callable[[Trial], Trial] | None = None) -> list[Trial]:
        """Trials for these candidates: from the log when already measured, else measured now, passed through
        `review` (what the phase concludes from them) and logged once."""
        ids = [c.trial_id(batch_size, phase) for c in candidates]
        if all(trial_id in self.run.trials for trial_id in ids):
            trials = [self.run.trials.get(trial_id) for trial_id in ids]
            for trial in trials:
                self.progress.trial(trial, reused=True)
            return trials
        if self.replay_only or deadline.expired or self.overall.expired:
            return []
        data = ensure_reference(self.info, batch_size, self.run.data_dir, WORKER_STARTUP_S, self.run.workers_log)
        # the timing must end within the deadline, after the worker has started and built every candidate
        remaining = min(deadline.remaining, self.overall.remaining) - WORKER_START_S * len(candidates)
        harness = replace(harness, max_time_s=max(0.2, min(harness.max_time_s, remaining)))
        contexts = [replace(c, batch_size=batch_size) for c in contexts]
        job = MeasureJob(tuple(candidates), contexts[0], data, harness, profile=profile, baseline=baseline,
                         percentile=percentile, hopeless_ms=hopeless_ms, contexts=tuple(contexts),
                         accuracy=self.accuracy if phase == "search" else None)
        trials = run_job(job, phase, self.limits(contexts, harness, deadline))
        if review is not None:
            trials = [review(trial) for trial in trials]
        for trial in trials:
            self.run.trials.append(trial)
            self.progress.trial(trial)
        return trials


@dataclass
class BackendTuning:
    """The search of one (tuner, target) pair within its share of the budget."""

    tuner: Tuner
    ctx: TuneContext
    slo: Slo
    measurer: Measurer

    def search(self, deadline: Deadline, best_ms: float | None) -> list[Trial]:
        """Every candidate of the backend's search, measured alone. `best_ms`: the best median so far on this
        target (earlier backends), which makes a much slower candidate stop early."""
        search = self.tuner.search(self.ctx)
        harness = self.measurer.harness.for_percentile(self.slo.percentile)
        trials: list[Trial] = []
        first = True
        while candidates := search.ask():
            for candidate in candidates:
                if deadline.expired and candidate.trial_id(self.ctx.batch_size) not in self.measurer.run.trials:
                    self.measurer.progress.stage(f"{self.tuner.name}@{self.ctx.target.id}: budget spent, search "
                                                 "stopped")
                    return trials
                hopeless = HOPELESS_FACTOR * best_ms if best_ms else None
                baseline = trials[0] if trials else None  # every search asks for its baseline first
                for trial in self.measurer.measure([candidate], [self.ctx], "search", self.ctx.batch_size, deadline,
                                                   harness, profile=first, hopeless_ms=hopeless,
                                                   review=lambda t: discard_if_slower(t, baseline)):
                    first = False
                    trials.append(trial)
                    if trial.ok:
                        best_ms = min(best_ms or float("inf"), trial.latency.p50)
                    # a candidate stopped early or discarded still tells the search how slow it was (TVM's
                    # untuned baseline: the tuned build must still be tried)
                    latency = trial.latency_at(self.slo.percentile) if trial.latency is not None else None
                    search.tell(TrialOutcome(candidate, latency is not None and trial.status in ("ok", "skipped"),
                                             latency))
        return trials


def discard_if_slower(trial: Trial, baseline: Trial | None) -> Trial:
    """A candidate clearly slower than its backend's baseline (a tuned build slower than the untuned one, an int8
    model slower than fp32) is never kept: its median is above the baseline's beyond both intervals and by more
    than the noise between two processes (DISCARD_MARGIN)."""
    if baseline is None or not baseline.ok or not trial.ok:
        return trial
    if trial.latency.intervals["p50"][0] <= baseline.latency.intervals["p50"][1] * DISCARD_MARGIN:
        return trial
    return trial.with_status("skipped", (
        f"discarded: slower than {trial.backend}'s baseline configuration ({trial.latency.p50:.4g} ms against "
        f"{baseline.latency.p50:.4g} ms p50, beyond both intervals and the noise between runs)"))


def is_baseline(trial: Trial, search_trials: Sequence[Trial]) -> bool:
    return bool(trial.config.get("stock")) or trial is search_trials[0]


@dataclass
class TargetTuning:
    """Every backend on one target, then one head-to-head and the sweeps."""

    target: Target
    backends: list[BackendTuning]
    measurer: Measurer
    slo: Slo
    sweep_batch_sizes: list[int]
    slo_batch_size: int

    def run(self, search_deadline: Deadline, unused: float) -> tuple[list[Trial], float]:
        progress = self.measurer.progress
        searched: list[Trial] = []
        baselines: list[Trial] = []
        best_ms = None
        for tuning in self.backends:
            progress.stage(f"tuning {tuning.tuner.name} on {self.target.label}")
            started = time.monotonic()
            budget = min(tuning.ctx.budget_s + unused, search_deadline.remaining)
            trials = tuning.search(Deadline.after(budget), best_ms)
            unused = max(0.0, tuning.ctx.budget_s + unused - (time.monotonic() - started))
            if trials:
                baselines.append(trials[0])
            searched += trials
            best_ms = min((t.latency.p50 for t in searched if t.ok), default=None)
        overall = self.measurer.overall
        confirmed = self.confirm(searched, baselines, Deadline.after(max(5.0, overall.remaining / 2)))
        finals = self.finalists(searched, baselines, confirmed)
        swept = self.sweep(finals, confirmed, overall)
        return searched + confirmed + swept, unused

    def _contexts(self) -> dict[str, TuneContext]:
        return {b.tuner.name: b.ctx for b in self.backends}

    def baseline(self, searched: list[Trial], baselines: list[Trial]) -> Trial | None:
        """The stock configuration when one was measured, else the first backend's baseline."""
        ok = [t for t in baselines if t.ok]
        return next((t for t in ok if t.config.get("stock")), ok[0] if ok else None)

    def confirm(self, searched: list[Trial], baselines: list[Trial], deadline: Deadline) -> list[Trial]:
        """The best few candidates of every backend and the baseline, one child, alternating rounds."""
        baseline = self.baseline(searched, baselines)
        challengers = sorted((t for t in searched if t.ok and t is not baseline),
                             key=lambda t: t.latency_at(self.slo.percentile))[:CONFIRM_TOP]
        if baseline is None or not challengers:
            return []
        chosen = [baseline, *challengers]
        contexts = self._contexts()
        harness = self.measurer.harness.for_percentile(self.slo.percentile)
        harness = replace(harness, min_iterations=harness.min_iterations * 2,
                          min_time_s=harness.min_time_s * len(chosen), max_time_s=harness.max_time_s * len(chosen))
        self.measurer.progress.stage(f"head-to-head of {len(chosen)} candidates on {self.target.label}")
        return self.measurer.measure([Candidate(t.backend, t.target, dict(t.config)) for t in chosen],
                                     [contexts[t.backend] for t in chosen], "confirm", self.slo_batch_size, deadline,
                                     harness, baseline=0, percentile=self.slo.percentile)

    def finalists(self, searched: list[Trial], baselines: list[Trial], confirmed: list[Trial]) -> list[Trial]:
        """[winner, baseline] (or just one when the baseline won): the winner beat the baseline in the
        head-to-head beyond the interval of the difference; ties go to the baseline."""
        baseline = self.baseline(searched, baselines)
        if baseline is None:
            best = min((t for t in searched if t.ok), key=lambda t: t.latency_at(self.slo.percentile), default=None)
            return [best] if best else []
        if not confirmed or not confirmed[0].ok:
            return [baseline]
        better = [t for t in confirmed[1:] if t.ok and (t.details.get("head_to_head") or {}).get("better")]
        if not better:
            return [baseline]
        winner = min(better, key=lambda t: t.latency_at(self.slo.percentile))
        return [winner, baseline]

    def sweep(self, finals: list[Trial], confirmed: list[Trial], overall: Deadline) -> list[Trial]:
        """The finalists alone at every batch size of the sweep (the SLO's batch size included)."""
        contexts = self._contexts()
        harness = self.measurer.harness.for_percentile(self.slo.percentile)
        trials: list[Trial] = []
        for rank, final in enumerate(finals):
            role = "winner" if rank == 0 else "baseline"
            self.measurer.progress.stage(f"batch-size sweep of the {role} ({final.backend}) on {self.target.id}")
            candidate = Candidate(final.backend, final.target, dict(final.config))
            for batch_size in self.sweep_batch_sizes:
                trials += self.measurer.measure([candidate], [contexts[final.backend]], "sweep", batch_size,
                                                Deadline.after(overall.remaining), harness,
                                                review=lambda t: self._checked(t, final, confirmed, role))
        return trials

    def _checked(self, trial: Trial, final: Trial, confirmed: list[Trial], role: str) -> Trial:
        """The sweep trial with its role, its agreement with the head-to-head, and (for a build compiled for one
        shape) whether it was really built like the one that was compared."""
        details = {**trial.details, "role": role}
        same = next((t for t in confirmed if t.ok and t.config == final.config), None)
        if trial.ok and same is not None and trial.batch_size == same.batch_size:
            details["solo_check"] = solo_check(trial, same, self.slo.percentile)
        status, reason = trial.status, trial.reason
        if trial.ok and not accepts_any_batch(trial.backend):
            want = final.details.get("tuning_status")
            got = trial.details.get("tuning_status")
            if want is not None and got != want:
                status, reason = "skipped", (f"left out of sizing: built {got or 'without a label'} at batch "
                                             f"{trial.batch_size}, not {want} like the candidate compared at batch "
                                             f"{final.batch_size}")
        return replace(trial, details=details, status=status, reason=reason)


def solo_check(solo: Trial, head_to_head: Trial, percentile: str) -> dict:
    """Does the solo figure agree with the head-to-head one? They disagree when their intervals do not overlap
    (then the head-to-head conditions were not those of a deployment, or the machine changed between them)."""
    solo_low, solo_high = solo.latency.intervals[percentile]
    h2h_low, h2h_high = head_to_head.latency.intervals[percentile]
    return {"percentile": percentile, "solo_ms": solo.latency.at(percentile),
            "head_to_head_ms": head_to_head.latency.at(percentile),
            "agrees": solo_low <= h2h_high and h2h_low <= solo_high}


@dataclass(frozen=True)
class TuningOutcome:
    trials: list[Trial]
    statuses: list[BackendStatus]


def _available_pairs(config: RecommendConfig, targets) -> tuple[list[tuple[Tuner, Target]], list[BackendStatus]]:
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


def tuning_inputs(config: RecommendConfig, run: RunFolder) -> dict:
    """TuneContext fields that come from the user's inputs: the original SOURCE when it was not ONNX, and the
    calibration samples the run folder holds (advisor.sample_data; absent: backends calibrate synthetically)."""
    calibration = calibration_path(run)
    return {"source": config.export.source if config.export else None,
            "calibration_path": calibration if calibration.exists() else None}


def calibration_path(run: RunFolder):
    return run.data_dir / "calibration.npz"


def sweep_sizes(info: ModelInfo, config: RecommendConfig) -> list[int]:
    """The SLO's batch size first (its figure is needed most), then the others."""
    if not info.batch_axis:
        return [1]
    return [config.slo_batch_size, *sorted(set(config.batch_sizes) - {config.slo_batch_size})]


def tune_targets(run: RunFolder, info: ModelInfo, config: RecommendConfig, targets,
                 progress: Progress, deadline: Deadline | None = None,
                 accuracy: AccuracyGate | None = None) -> TuningOutcome:
    """Search, confirm and sweep every available backend on every target, within what is left of --budget.

    ARTIFACT_SHARE of the budget is kept for the artifact; SEARCH_SHARE of the rest is split over the (backend,
    target) pairs by the registry's budget weights (a backend that finishes early leaves its remainder to the
    next); the rest is for head-to-heads and sweeps.
    """
    pairs, statuses = _available_pairs(config, targets)
    memory_limit = config.memory_limit_mib or psutil.virtual_memory().total / 2**20 * 0.8
    deadline = deadline or Deadline.after(config.budget_s)  # the whole run's: what analysis left of --budget
    tuning_s = max(0.0, deadline.remaining - config.budget_s * ARTIFACT_SHARE)
    overall = Deadline.after(tuning_s)
    measurer = Measurer(run, info, config.harness, memory_limit, progress, overall, config.trial_timeout_s,
                        grace_s=max(2.0, WORKER_GRACE_SHARE * tuning_s), accuracy=accuracy,
                        replay_only=run.finished)
    if run.finished:
        progress.stage(f"{run.path} holds a finished run: its {len(run.trials)} trials are replayed, nothing is "
                       "measured (a new --out measures afresh)")
    total_weight = max(sum(TUNERS[tuner.name].budget_weight for tuner, _ in pairs), 1e-9)
    by_target: dict[str, TargetTuning] = {}
    for tuner, target in pairs:
        share = tuning_s * SEARCH_SHARE * TUNERS[tuner.name].budget_weight / total_weight
        ctx = TuneContext(info=info, target=target, workdir=run.backend_dir(tuner.name, target.id),
                          cache_dir=config.cache_dir, budget_s=share, tolerance=config.tolerance,
                          batch_size=config.slo_batch_size, **tuning_inputs(config, run))
        tuning = by_target.setdefault(target.id, TargetTuning(target, [], measurer, config.slo,
                                                              sweep_sizes(info, config), config.slo_batch_size))
        tuning.backends.append(BackendTuning(tuner, ctx, config.slo, measurer))
    search_deadline = Deadline.after(tuning_s * SEARCH_SHARE)
    trials: list[Trial] = []
    unused = 0.0
    for tuning in by_target.values():
        measured, unused = tuning.run(search_deadline, unused)
        trials += measured
    return TuningOutcome(trials, statuses)
