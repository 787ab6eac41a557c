"""MetaSchedule tuning within a wall-clock budget, and the tuning database kept between runs.

Why it is shaped this way (measured on a 2-core machine, see ../shared/NOTES.md):
- A naive `tune_relax(max_trials_global=N)` spends its trials on the first tasks in task order and none on the
  heaviest ones. Here trials go to the tasks that carry the work: tasks are ranked by FLOPs x occurrences, the
  smallest set covering most of the FLOPs is tuned, each gets trials in proportion to its share (with a floor),
  heaviest first; the rest get a fallback schedule at build time (tuners/tvm_compile.py).
- MetaSchedule stops on trial counts, not time: tasks are tuned in rounds (one MetaSchedule run per task and
  round, sharing one cost model), and a measure callback ends the current run once the deadline passes.
- The stock LocalBuilder starts a fresh worker pool for every batch of candidates, and each fresh worker spends
  ~20-35 s importing TVM's tensor intrinsics: on 2 cores that is most of a small budget. Candidates are built in
  this process instead; the whole tuning run is already isolated in a child process with a time-out, so a
  compiler crash or hang fails the tuned trial, not the advisor.
- The evolutionary search's default population (512, 4 generations) costs ~25 s per round here; a smaller one
  finds the same order of speed-up in a small budget.

The database: one MetaSchedule JSON database per TVM target under the cache dir (`CACHE/tvm/<target>/`), shared
by all runs. A tuning run works on a private copy in its run folder, taken under a file lock, and merges its new
records back under the same lock, so concurrent runs in different folders never write the same file, and a run
killed mid-tuning still contributes its records at the next attempt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
BASELINE = "baseline.json"  # how many record lines the private copy had when it was taken from the cache
MIN_TRIALS_PER_TASK = 16
TRIALS_PER_ROUND = 8
FLOP_COVERAGE = 0.97  # tune the heaviest tasks that together carry this share of the FLOPs
MIN_TASK_SHARE = 0.005  # a task under this share of the FLOPs is never worth a trial
LOCK_TIMEOUT_S = 300
FALLBACK = "fallback"  # subfolder of a database folder: cost-model-picked schedules of tasks never measured
FALLBACK_S_PER_TASK = 1.6  # time kept back from measured tuning for each of those picks (2 cores)
FALLBACK_SHARE = 0.6  # at most this share of the tuning time goes to picks
MIN_MEASURE_S = 12.0  # starting the runner's worker (it imports TVM: 3-6 s on 2 cores) and one round of trials
# (4-14 s): a tuning time under this measures nothing, so it goes to picks; the time kept for picks never eats
# into it, so a longer one always measures
FALLBACK_PICKS = 4
FALLBACK_SEED = 1
WARM_START_RECORDS = 512  # measured records the cost model learns from before a run measures anything
NO_TIME_TO_MEASURE = "no time to measure"  # stopped_by of a tuning time under MIN_MEASURE_S
UNMEASURED_S = 1e3  # the run time a picked (never measured) schedule is stored with: it never beats a measured one

log = logging.getLogger("advisor.tvm")


@dataclass(frozen=True)
class TaskPlan:
    """One extracted task and what this run spends on it."""

    index: int  # position in the extracted task list
    name: str
    flops: float  # per call
    weight: int  # calls per inference
    existing_trials: int  # measured records already in the database
    trials: int  # trials to run now (0: tuned enough already, or too small to tune)

    @property
    def work(self) -> float:
        return self.flops * self.weight


def plan_tasks(tasks: list[tuple[str, float, int, int]], max_trials: int) -> list[TaskPlan]:
    """Share `max_trials` over tasks given as (name, flops, weight, existing trials).

    The heaviest tasks covering FLOP_COVERAGE of the work are tuned (a task under MIN_TASK_SHARE never is), as
    many as MIN_TRIALS_PER_TASK each allows; each gets trials in proportion to its work, at least the floor,
    less the trials the database already has for it. Result in tuning order: heaviest first.
    """
    total = sum(flops * weight for _, flops, weight, _ in tasks) or 1.0
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i][1] * tasks[i][2])
    capacity = max(1, max_trials // MIN_TRIALS_PER_TASK)
    chosen, covered = [], 0.0
    for i in order:
        share = tasks[i][1] * tasks[i][2] / total
        if covered >= FLOP_COVERAGE or share < MIN_TASK_SHARE or len(chosen) >= capacity:
            break
        chosen.append(i)
        covered += share
    chosen_work = sum(tasks[i][1] * tasks[i][2] for i in chosen) or 1.0
    plans = []
    for i in order:
        name, flops, weight, existing = tasks[i]
        trials = 0
        if i in chosen:
            wanted = max(MIN_TRIALS_PER_TASK, math.floor(max_trials * flops * weight / chosen_work))
            trials = max(0, wanted - existing)
        plans.append(TaskPlan(i, name, float(flops), int(weight), int(existing), trials))
    return plans


@dataclass
class TuningOutcome:
    """What a tuning run did, for the trial's details and the report's tuning-progress plot."""

    tasks: int
    tasks_tuned: int  # tasks given trials in this run
    tasks_reused: int  # tasks planned for tuning whose records all came from the database
    trials_used: int
    tuning_time_s: float
    stopped_by: str  # "plan" (every task got its share), "deadline", "nothing to tune" or NO_TIME_TO_MEASURE
    progress: list[list[Any]] = field(default_factory=list)  # [elapsed_s, trials, estimated ms]
    task_table: list[dict[str, Any]] = field(default_factory=list)
    fallbacks_picked: int = 0  # untuned tasks given the schedule the cost model predicts fastest in this run
    warm_start_records: int = 0  # measured records from the database the cost model learned from first
    # after tuning, what the database holds for these tasks (this run's and earlier runs' records):
    measured_trials: int = 0  # valid measured records (failed candidates are stored too and not counted)
    tasks_with_measured_records: int = 0
    predicted_picks: int = 0  # tasks with no measured record whose schedule is a cost-model pick

    def details(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "tasks_tuned": self.tasks_tuned, "tasks_reused": self.tasks_reused,
                "trials_used": self.trials_used, "tuning_time_s": round(self.tuning_time_s, 2),
                "stopped_by": self.stopped_by, "fallbacks_picked": self.fallbacks_picked,
                "warm_start_records": self.warm_start_records, "progress": self.progress,
                "tasks_total": self.tasks, "measured_trials": self.measured_trials,
                "tasks_with_measured_records": self.tasks_with_measured_records,
                "predicted_picks": self.predicted_picks}


# ---- the label: what a build really got -----------------------------------------------------------------------------

UNTUNED, PREDICTED, TUNED = "untuned", "predicted", "tuned"


def tuning_label(tuning: dict[str, Any], facts: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """The tuned build's label, from what the build applied (`facts` of tvm_compile.build_with_database) and
    what the databases held for its tasks (`tuning`, TuningOutcome.details): "tuned" when at least one function
    runs a measured record's schedule, "predicted" when every schedule applied is a cost-model pick (never
    measured), "untuned" when no record was applied (design-space samples only). The config of the candidate
    says `tuned: true` whatever happened; this says what did."""
    if facts.get("functions_from_database"):
        status = TUNED
    elif facts.get("functions_from_cost_model"):
        status = PREDICTED
    else:
        status = UNTUNED
    return {"tuning_status": status, "measured_trials": int(tuning.get("measured_trials", 0)),
            "predicted_picks": int(tuning.get("predicted_picks", 0)),
            "tasks_total": int(tuning.get("tasks_total", tuning.get("tasks", 0))),
            "tasks_with_measured_records": int(tuning.get("tasks_with_measured_records", 0)),
            "batch_size_tuned": batch_size if status != UNTUNED else None}


def untuned_label(tasks_total: int) -> dict[str, Any]:
    """The label of the default-pipeline build: nothing tuned, nothing predicted."""
    return {"tuning_status": UNTUNED, "measured_trials": 0, "predicted_picks": 0, "tasks_total": tasks_total,
            "tasks_with_measured_records": 0, "batch_size_tuned": None}


# ---- the shared database ------------------------------------------------------------------------------------------


def cache_folder(cache_dir: Path, target_label: str) -> Path:
    """CACHE/tvm/<readable target>-<hash>/: one database per TVM target (records are target-specific)."""
    readable = "".join(c if c.isalnum() or c in "-_=" else "_" for c in target_label)[:60]
    digest = hashlib.sha256(target_label.encode()).hexdigest()[:8]
    return Path(cache_dir) / "tvm" / f"{readable}-{digest}"


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _lock(folder: Path):
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / ".lock"), timeout=LOCK_TIMEOUT_S)


def merge_records(private: Path, shared: Path) -> int:
    """Merge a run's private database (measured records, and the fallback picks beside them) into the shared
    one. Returns the measured records added."""
    if (private / FALLBACK / RECORDS).exists():
        _merge_one(private / FALLBACK, shared / FALLBACK)
    return _merge_one(private, shared)


def _merge_one(private: Path, shared: Path) -> int:
    """Append the private database's records that the shared one lacks (under the shared folder's lock).

    Record lines are `[workload index, record]`; indices are remapped onto the shared workload file. Identity
    is the exact workload line and record JSON, so merging twice adds nothing. Returns records added.
    """
    new_lines = _lines(private / RECORDS)[_baseline(private):]
    if not new_lines:
        return 0
    private_workloads = _lines(private / WORKLOADS)
    with _lock(shared):
        workloads = _lines(shared / WORKLOADS)
        index_of = {line: i for i, line in enumerate(workloads)}
        known = set()
        for line in _lines(shared / RECORDS):
            idx, record = json.loads(line)
            known.add((workloads[idx], json.dumps(record, sort_keys=True)))
        added_workloads, added_records = [], []
        for line in new_lines:
            try:
                idx, record = json.loads(line)
                workload = private_workloads[idx]
            except (ValueError, IndexError, TypeError):
                continue  # a torn last line of a killed run
            key = (workload, json.dumps(record, sort_keys=True))
            if key in known:
                continue
            known.add(key)
            if workload not in index_of:
                index_of[workload] = len(workloads) + len(added_workloads)
                added_workloads.append(workload)
            added_records.append(json.dumps([index_of[workload], record]))
        _append(shared / WORKLOADS, added_workloads)
        _append(shared / RECORDS, added_records)
    _mark_baseline(private)
    return len(added_records)


def _baseline(private: Path) -> int:
    """Record lines the private copy held when last in step with the shared database (later ones are new)."""
    path = private / BASELINE
    return json.loads(path.read_text()).get("records", 0) if path.exists() else 0


def _mark_baseline(private: Path) -> None:
    (private / BASELINE).write_text(json.dumps({"records": len(_lines(private / RECORDS))}))


def _append(path: Path, lines: list[str]) -> None:
    if lines:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()


def private_copy(shared: Path, private: Path) -> Path:
    """A private copy of the shared database (and its fallback picks) for one tuning run. Records a killed
    earlier attempt left in the private copy are merged into the shared database first, so nothing measured is
    lost."""
    if (private / RECORDS).exists():
        merge_records(private, shared)
    _copy_one(shared / FALLBACK, private / FALLBACK)
    return _copy_one(shared, private)


def _copy_one(shared: Path, private: Path) -> Path:
    private.mkdir(parents=True, exist_ok=True)
    with _lock(shared):
        for name in (WORKLOADS, RECORDS):
            if (shared / name).exists():
                shutil.copyfile(shared / name, private / name)
            else:
                (private / name).write_text("")
    _mark_baseline(private)
    return private


# ---- tuning ---------------------------------------------------------------------------------------------------------


def register_cpu_intrinsics_only(arch: str) -> None:
    """Make `import tvm.s_tir.tensor_intrin` (done by every TuneContext) register only this CPU's intrinsics.

    The package registers the tensor intrinsics of every target TVM knows: ~20 s on 2 cores, 14 s of it for
    CUDA's, paid by every tuning run and every tuned build. A CPU build needs only x86's or Arm's. The package is
    entered into sys.modules without running its __init__, and just the one submodule is imported.
    """
    import importlib
    import importlib.util

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    importlib.import_module(f"{name}.{'arm_cpu' if arch == 'aarch64' else 'x86'}")


def _in_process_builder():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Builds each candidate in this process (see the module docstring for why)."""

        def build(self, build_inputs):
            results = []
            for build_input in build_inputs:
                try:
                    module = default_build(build_input.mod, build_input.target, None)
                    results.append(BuilderResult(default_export(module), None))
                except Exception as error:  # a candidate that does not compile is a failed measurement
                    results.append(BuilderResult(None, f"build failed: {str(error)[:500]}"))
            return results

    return InProcessBuilder()


def _mean_seconds(run_secs) -> float:
    values = [float(value) for value in run_secs]
    return sum(values) / len(values) if values else float("inf")


class DeadlineReached(Exception):
    """Raised from the measure callback to end a MetaSchedule run on time (MetaSchedule only counts trials)."""


def _round_callback(deadline: float):
    """A measure callback that records the best kernel time of each round and ends the run at the deadline.

    Raising is the only safe way out: terminating a task from inside a callback trips MetaSchedule's own checks
    (the scheduler joins a task's results and then runs that very task again). The records measured so far are
    already in the database, since the default callbacks that commit them run first.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class RoundCallback(PyMeasureCallback):
        def __init__(self):
            super().__init__()
            self.trials = 0
            self.best_s: float | None = None
            self.deadline_reached = False

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            self.trials += len(measure_candidates)
            for result in runner_results:
                if result.run_secs:
                    seconds = _mean_seconds(result.run_secs)
                    self.best_s = seconds if self.best_s is None else min(self.best_s, seconds)
            if time.monotonic() >= deadline:
                self.deadline_reached = True
                raise DeadlineReached()

    return RoundCallback()


def local_runner():
    """Measures candidates on this machine, in one worker process kept for the whole run."""
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=ms.runner.EvaluatorConfig(
        number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False))


def tune(mod, target, database_dir: Path, max_trials: int, seconds: float, threads: int,
         runner=None) -> TuningOutcome:
    """Tune the fused Relax module `mod` for `target` into the JSON database in `database_dir` (a private
    copy), within `seconds` of wall clock and `max_trials` measured candidates. `runner` measures candidates
    (default: this machine; an RPC runner measures on a remote device).

    Rounds of TRIALS_PER_ROUND trials go to each planned task in turn, heaviest first, so the heaviest tasks are
    covered first and an early deadline leaves only the light ones to the fallback schedule. One cost model is
    shared by all rounds and tasks. After every round the latency estimate (sum over tuned tasks of calls x
    best kernel time) is recorded once every planned task has a measurement.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops

    started = time.monotonic()
    deadline = started + seconds
    database = open_database(database_dir)
    extracted = list(ms.relax_integration.extract_tasks(mod, target))
    described, best_known = [], {}
    for index, task in enumerate(extracted):
        func = task.dispatched[0]
        records = records_of(database, func)
        if records:
            best_known[index] = min(_mean_seconds(record.run_secs) for record in records)
        described.append((task.task_name, float(estimate_tir_flops(func)), int(task.weight), len(records)))
    plans = plan_tasks(described, max_trials)
    to_tune = [p for p in plans if p.trials > 0]
    reused = sum(1 for p in plans if p.trials == 0 and p.existing_trials >= MIN_TRIALS_PER_TASK)
    table = {p.index: {"name": p.name, "flops": p.flops, "weight": p.weight, "existing_trials": p.existing_trials,
                       "trials": p.trials} for p in plans}
    cost_model = ms.CostModel.create("xgb", num_tuning_cores=threads, tree_method="auto")
    warm_records = warm_start(cost_model, database, target, threads)
    unmeasured = [p for p in plans if p.existing_trials == 0 and p not in to_tune]
    # the cost-model-picked schedules of the tasks left untuned get a slice of the time, taken off the end
    reserve_s = pick_reserve_s(seconds, deadline - time.monotonic(), len(unmeasured))
    tuning_deadline = deadline - reserve_s
    used = [0] * len(to_tune)
    best: list[float | None] = [best_known.get(p.index) for p in to_tune]
    progress: list[list[Any]] = []
    stopped_by = _why_not_measured(to_tune, seconds, tuning_deadline)
    if stopped_by is None:
        stopped_by = _tuning_rounds(extracted, to_tune, database, database_dir, target, threads, cost_model,
                                    runner or local_runner(), tuning_deadline, used, best, progress, started)
    # planned tasks the deadline left without a valid measurement (or whose candidates all failed) get picks too
    left = [p for p in to_tune if not records_of(database, extracted[p.index].dispatched[0])]
    heaviest_first = sorted(unmeasured + left, key=lambda p: -p.work)
    # the last measured round may end past its deadline: the picks keep their reserved time all the same
    pick_deadline = max(deadline, time.monotonic() + reserve_s)
    fallback = open_database(database_dir / FALLBACK)
    fallbacks = pick_fallbacks(extracted, heaviest_first, target, database, fallback, cost_model, threads,
                               pick_deadline)
    for i, plan in enumerate(to_tune):
        table[plan.index]["trials_used"] = used[i]
        table[plan.index]["best_us"] = round(best[i] * 1e6, 2) if best[i] is not None else None
    return TuningOutcome(len(extracted), sum(1 for u in used if u), reused, sum(used), time.monotonic() - started,
                         stopped_by, progress, list(table.values()), fallbacks, warm_records,
                         **record_counts(extracted, database, fallback))


def _why_not_measured(to_tune: list[TaskPlan], seconds: float, deadline: float) -> str | None:
    """Why no measured round runs (the stopped_by of the run), or None when they run."""
    if not to_tune:
        return "nothing to tune"
    if seconds < MIN_MEASURE_S:
        return NO_TIME_TO_MEASURE  # not even one round would be measured: the time goes to the picks
    if time.monotonic() >= deadline:
        return "deadline"
    return None


def pick_reserve_s(seconds: float, left_s: float, unmeasured: int) -> float:
    """Time kept back at the end of tuning for the cost-model picks of `unmeasured` tasks, when `left_s` of the
    `seconds` remain. Measured trials come first: the reserve never takes the time the first measured round
    needs, so a short budget measures the heaviest task and skips the picks instead of predicting every
    schedule and measuring none."""
    wanted = min(FALLBACK_SHARE * seconds, FALLBACK_S_PER_TASK * unmeasured)
    return max(0.0, min(wanted, left_s - MIN_MEASURE_S))


def records_of(database, mod) -> list:
    """The task's valid records in the database, best first. Failed candidates are stored too (run time 1e10 s)
    and `get_top_k` leaves them out; the `has_workload` check keeps the lookup from adding a workload."""
    return database.get_top_k(database.commit_workload(mod), 10**6) if database.has_workload(mod) else []


def record_counts(extracted, database, fallback) -> dict[str, int]:
    """What the databases hold for these tasks after tuning (this run's records and earlier runs'): the build
    applies exactly these, measured records first, then the cost model's picks."""
    measured = [len(records_of(database, task.dispatched[0])) for task in extracted]
    picked = sum(1 for task, count in zip(extracted, measured)
                 if not count and records_of(fallback, task.dispatched[0]))
    return {"measured_trials": sum(measured), "tasks_with_measured_records": sum(1 for c in measured if c),
            "predicted_picks": picked}


def warm_start(cost_model, database, target, threads: int, limit: int = WARM_START_RECORDS) -> int:
    """Train the cost model on the measured records already in the database (the best per workload first), so
    a run that measures little or nothing (a sweep batch size, a second run) still predicts from experience:
    the features transfer between tasks of the same kind. Returns the records used."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner import RunnerResult

    by_workload: dict[Any, list] = {}
    for record in database.get_all_tuning_records():
        if record.run_secs and _mean_seconds(record.run_secs) < UNMEASURED_S:
            by_workload.setdefault(record.workload, []).append(record)
    used = 0
    for workload, records in by_workload.items():
        records = sorted(records, key=lambda r: _mean_seconds(r.run_secs))[:max(1, limit // len(by_workload))]
        try:
            context = ms.TuneContext(mod=workload.mod, target=target, num_threads=threads)
            cost_model.update(context, [r.as_measure_candidate() for r in records],
                              [RunnerResult([float(s) for s in r.run_secs], None) for r in records])
            used += len(records)
        except Exception as error:  # a record that no longer replays is skipped, not fatal
            log.warning("cost model warm start skipped a workload: %s", str(error)[:200])
    return used


def _tuning_rounds(extracted, to_tune, database, database_dir: Path, target, threads: int, cost_model, runner,
                   deadline: float, used: list[int], best: list, progress: list, started: float) -> str:
    """Rounds of measured trials over the planned tasks, heaviest first, until the plan or the deadline ends.
    Fills `used`, `best` and `progress` in place; returns what stopped it ("plan" or "deadline")."""
    from tvm.s_tir import meta_schedule as ms

    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        [extracted[p.index] for p in to_tune], str(database_dir / "logs"), space="post-order-apply",
        strategy=ms.search_strategy.EvolutionarySearch(population_size=128, init_min_unmeasured=32,
                                                       genetic_num_iters=2),
        num_threads=threads, seed=0)
    builder = _in_process_builder()
    remaining = [p.trials for p in to_tune]
    while any(remaining):
        for i in range(len(to_tune)):
            if not remaining[i]:
                continue
            if time.monotonic() >= deadline:
                return "deadline"
            count = min(TRIALS_PER_ROUND, remaining[i])
            callback = _round_callback(deadline)
            try:
                ms.tune_tasks(tasks=[contexts[i]], task_weights=[weights[i]], work_dir=str(database_dir / "logs"),
                              max_trials_global=count, max_trials_per_task=count, num_trials_per_iter=count,
                              builder=builder, runner=runner, database=database, cost_model=cost_model,
                              measure_callbacks=[*ms.MeasureCallback.create("default"), callback],
                              task_scheduler="round-robin")
            except Exception:  # MetaSchedule hands our DeadlineReached back wrapped in its own error type
                if not callback.deadline_reached and time.monotonic() < deadline:
                    raise
            remaining[i] = 0 if callback.trials == 0 else max(0, remaining[i] - callback.trials)
            used[i] += callback.trials
            if callback.best_s is not None:
                best[i] = callback.best_s if best[i] is None else min(best[i], callback.best_s)
            if all(b is not None for b in best):
                estimate_ms = sum(p.weight * b for p, b in zip(to_tune, best)) * 1000
                progress.append([round(time.monotonic() - started, 2), sum(used), round(estimate_ms, 4)])
            if callback.deadline_reached:
                return "deadline"
    return "plan"


def pick_fallbacks(extracted, plans: list[TaskPlan], target, measured, fallback, cost_model, threads: int,
                   deadline: float) -> int:
    """For each task with no measured record, the schedule this run's cost model predicts fastest among a small
    evolutionary search of MetaSchedule's design space, never measured, kept in the `fallback` database apart
    from the `measured` one. The model learned from the tuned tasks' measurements transfers to
    tasks of the same kinds (other convolutions, other matmuls); without any, the pick is a random sample.
    Returns how many were picked."""
    from tvm.s_tir import meta_schedule as ms

    picked = 0
    for plan in plans:
        if time.monotonic() >= deadline:
            break
        func = extracted[plan.index].dispatched[0]
        if fallback.has_workload(func) and fallback.get_top_k(fallback.commit_workload(func), 1):
            continue
        context = ms.TuneContext(mod=func, target=target, space_generator="post-order-apply",
                                 search_strategy=ms.search_strategy.EvolutionarySearch(
                                     population_size=64, init_min_unmeasured=16, genetic_num_iters=1,
                                     eps_greedy=0.0),
                                 task_name=plan.name, num_threads=threads, rand_state=FALLBACK_SEED)
        try:
            context.pre_tuning(max_trials=FALLBACK_PICKS, num_trials_per_iter=FALLBACK_PICKS,
                               design_spaces=context.generate_design_space(), database=measured,
                               cost_model=cost_model)
            candidates = context.generate_measure_candidates() or []
            context.post_tuning()
        except Exception as error:  # no pick: the build falls back to one design-space sample for this task
            log.warning("no cost-model pick for %s: %s", plan.name, str(error)[:200])
            continue
        if candidates:
            workload = fallback.commit_workload(func)
            fallback.commit_tuning_record(ms.database.TuningRecord(
                candidates[0].sch.trace, workload, [UNMEASURED_S], target, candidates[0].args_info))
            picked += 1
    return picked


def open_database(database_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(path_workload=str(database_dir / WORKLOADS),
                                    path_tuning_record=str(database_dir / RECORDS))
