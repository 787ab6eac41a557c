"""Driving one backend on one target: the ask/tell search, the interleaved head-to-head of the best
candidates against the stock baseline, and the batch-size sweep of the winner. Every trial goes through the
run folder's log first, so a resumed run re-measures nothing it already has."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import psutil

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
from tuners.registry import TUNERS, load_tuner, tuner_names

SEARCH_SHARE = 0.7  # of --budget; the rest goes to the head-to-heads and the batch sweeps
CONFIRM_TOP = 3  # candidates (besides the baseline) re-measured head to head
WORKER_STARTUP_S = 120.0  # slack on each worker's time-out for process start, imports and compilation


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
class BackendTuning:
    """Search, confirm and sweep for one (tuner, target) pair within its share of the budget."""

    tuner: Tuner
    ctx: TuneContext
    run: RunFolder
    info: ModelInfo
    slo: Slo
    harness: HarnessSettings
    memory_limit_mib: float | None
    progress: Progress
    timeout_s: float | None = None  # fixed per-worker time-out; None: derived from the budget share

    def _limits(self, n_candidates: int, harness: HarnessSettings) -> ExecutionLimits:
        timeout = self.timeout_s or WORKER_STARTUP_S + self.ctx.budget_s + n_candidates * (harness.max_time_s + 30)
        return ExecutionLimits(timeout, self.memory_limit_mib, self.run.workers_log)

    @staticmethod
    def _harness_within(deadline: Deadline, harness: HarnessSettings) -> HarnessSettings:
        return replace(harness, max_time_s=max(0.2, min(harness.max_time_s, deadline.remaining)))

    def _measure(self, candidates: list[Candidate], phase: str, batch_size: int, deadline: Deadline,
                 profile: bool = False, harness: HarnessSettings | None = None) -> list[Trial]:
        """Trials for these candidates: from the log when already measured, else measured now (and logged)."""
        ctx = replace(self.ctx, batch_size=batch_size)
        ids = [c.trial_id(batch_size, phase) for c in candidates]
        if all(trial_id in self.run.trials for trial_id in ids):
            trials = [self.run.trials.get(trial_id) for trial_id in ids]
            for trial in trials:
                self.progress.trial(trial, reused=True)
            return trials
        if deadline.expired:
            return []
        data = ensure_reference(self.info, batch_size, self.run.data_dir, WORKER_STARTUP_S, self.run.workers_log)
        harness = self._harness_within(deadline, harness or self.harness)
        job = MeasureJob(tuple(candidates), ctx, data, harness, profile=profile)
        trials = run_job(job, phase, self._limits(len(candidates), harness))
        for trial in trials:
            self.run.trials.append(trial)
            self.progress.trial(trial)
        return trials

    def search(self, deadline: Deadline) -> list[Trial]:
        search = self.tuner.search(self.ctx)
        trials: list[Trial] = []
        first = True
        while candidates := search.ask():
            for candidate in candidates:
                if deadline.expired and candidate.trial_id(self.ctx.batch_size) not in self.run.trials:
                    self.progress.stage(f"{self.tuner.name}@{self.ctx.target.id}: budget spent, search stopped")
                    return trials
                measured = self._measure([candidate], "search", self.ctx.batch_size, deadline, profile=first)
                first = False
                for trial in measured:
                    trials.append(trial)
                    latency = trial.latency_at(self.slo.percentile) if trial.ok else None
                    search.tell(TrialOutcome(candidate, trial.ok, latency))
        return trials

    def confirm(self, search_trials: list[Trial], deadline: Deadline) -> list[Trial]:
        """Re-measure the best few candidates and the baseline side by side in one process.

        Search trials each ran in their own process at different times, so small differences between them are
        noise; the head-to-head decides, and because the baseline takes part the winner is never slower than
        what the user gets without the advisor.
        """
        ok = [t for t in search_trials if t.ok and t.phase == "search"]
        if len(ok) < 2:
            return []
        ranked = sorted(ok, key=lambda t: t.latency_at(self.slo.percentile))
        chosen = ranked[:CONFIRM_TOP]
        baseline = search_trials[0]  # every search asks for its baseline first
        if baseline.ok and baseline.id not in {t.id for t in chosen}:
            chosen.append(baseline)
        candidates = [Candidate(t.backend, t.target, dict(t.config)) for t in chosen]
        harness = replace(self.harness, min_iterations=self.harness.min_iterations * 2,
                          min_time_s=self.harness.min_time_s * len(candidates),
                          max_time_s=self.harness.max_time_s * len(candidates))
        return self._measure(candidates, "confirm", self.ctx.batch_size, deadline, harness=harness)

    def sweep(self, best: Trial, batch_sizes: list[int], deadline: Deadline) -> list[Trial]:
        """The winner at each other batch size, for throughput sizing."""
        candidate = Candidate(best.backend, best.target, dict(best.config))
        trials = []
        for batch_size in batch_sizes:
            if batch_size == best.batch_size:
                continue
            trials += self._measure([candidate], "sweep", batch_size, deadline)
        return trials


def best_trial(trials: list[Trial], percentile: str) -> Trial | None:
    """The fastest ok trial, preferring head-to-head (confirm) measurements over search ones."""
    ok = [t for t in trials if t.ok]
    confirmed = [t for t in ok if t.phase == "confirm"]
    pool = confirmed or [t for t in ok if t.phase == "search"]
    return min(pool, key=lambda t: t.latency_at(percentile)) if pool else None




@dataclass(frozen=True)
class TuningOutcome:
    trials: list[Trial]
    statuses: list[BackendStatus]
    tunings: list[BackendTuning]


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


def sweep_sizes(info: ModelInfo, config: RecommendConfig) -> list[int]:
    if not info.batch_axis:
        return [1]
    return sorted(set(config.batch_sizes) | {config.slo_batch_size})


def tune_targets(run: RunFolder, info: ModelInfo, config: RecommendConfig, targets,
                 progress: Progress) -> TuningOutcome:
    """Search, confirm and sweep every available backend on every target, within --budget.

    SEARCH_SHARE of the budget is split over the (backend, target) pairs by the registry's budget weights (a
    backend that finishes early leaves its remainder to the next); the rest is for head-to-heads and sweeps.
    """
    pairs, statuses = _available_pairs(config, targets)
    memory_limit = config.memory_limit_mib or psutil.virtual_memory().total / 2**20 * 0.8
    weights = {id(pair): TUNERS[pair[0].name].budget_weight for pair in pairs}
    overall = Deadline.after(config.budget_s)
    tunings = []
    for tuner, target in pairs:
        share = config.budget_s * SEARCH_SHARE * TUNERS[tuner.name].budget_weight / max(sum(weights.values()), 1e-9)
        ctx = TuneContext(info=info, target=target, workdir=run.backend_dir(tuner.name, target.id),
                          cache_dir=config.cache_dir, budget_s=share, tolerance=config.tolerance,
                          batch_size=config.slo_batch_size)
        tunings.append(BackendTuning(tuner, ctx, run, info, config.slo, config.harness, memory_limit, progress,
                                     config.trial_timeout_s))
    trials: list[Trial] = []
    unused = 0.0
    for tuning in tunings:
        name, target = tuning.tuner.name, tuning.ctx.target
        progress.stage(f"tuning {name} on {target.label}")
        started = time.monotonic()
        searched = tuning.search(Deadline.after(min(tuning.ctx.budget_s + unused, overall.remaining)))
        unused = max(0.0, tuning.ctx.budget_s + unused - (time.monotonic() - started))
        trials += searched
        trials += tuning.confirm(searched, Deadline.after(max(10.0, overall.remaining / 2)))
        best = best_trial([t for t in trials if t.backend == name and t.target == target.id], config.slo.percentile)
        if best is not None:
            progress.stage(f"batch-size sweep of the best {name} candidate on {target.id}")
            trials += tuning.sweep(best, sweep_sizes(info, config), Deadline.after(overall.remaining + 30))
    return TuningOutcome(trials, statuses, tunings)
