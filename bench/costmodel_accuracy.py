"""How well does the cost model predict measurements it did not see? Measured on this machine.

Seven varied models (CNNs of two sizes, an MLP, a one-block attention encoder, and, when torch and transformers
are installed, MobileNetV2, ResNet-18 and a 4-layer BERT with random weights) are measured with ONNX Runtime at
1 and 2 intra-op threads and batch sizes 1, 2, 4: the six configurations of one model are timed interleaved in
one process, in several rounds, and each point is the median of the rounds' medians (the machine is shared, so
single runs are noisy). ONNX Runtime's profiler also records the time per operator class of every point.

Then, with the same code the ranking uses (advisor.costmodel), each held-out point is predicted by a fit that
never saw it:

- threads: for each model and thread count t, fit on every point except that model's points at t (the other
  models at both thread counts teach the thread scaling), predict them anchored on the same model's
  measurement at the other thread count and the same batch (as the ranking anchors on a measurement);
- threads-own: the same, fitted on that model's own points at the other thread count only (fit on 1 thread,
  predict 2 and vice versa): the thread scaling is then the prior parallel fraction, not learned;
- batch:   for each model and thread count, fit on everything except that model's batch-4 points, predict
  batch 4 anchored on batch 2;
- model:   leave one model out: fit on the other models, predict the held-out model from its analysis alone
  (no anchor: FLOPs, bytes and node counts only).

Every fit sees per-class times from the profiler of its training points only. Prints a table and ends with
exactly one line `costmodel MAPE: X%` (all held-out predictions together).

Measurements are cached (bench/.cache/costmodel_points.json, git-ignored), so the model can be iterated on
without re-measuring; --remeasure measures again and overwrites the cache (--models a,b: only those, merged).
A points file records the machine it came from (label and CPU: march, ISA, cores); the Hardware the fits use is
built from it as advisor.ranking.target_hardware builds it for a measured machine. bench/measurements/ keeps
points from other machines.

Cross-hardware mode (--fit-on A.json --predict B.json): every point of B is predicted from A's points, anchored
on A's measurement of the same model, threads and batch and moved with advisor.costmodel.transfer from A's
Hardware to B's (fits on all of A's points, and on that model's points only, as the ranking fits one run), and
unanchored. Prints MAPE per model and overall, the measured / predicted ratios, and interval coverage: the share
of B's points inside the interval transfer() gives (residual band x CROSS_HARDWARE_FACTOR of the relation), with
the factor that would have covered 95 %. Ends with `cross-hardware MAPE (A -> B, anchored): X%`.

    .venv/bin/python bench/costmodel_accuracy.py [--remeasure [--models mlp,encoder]] [--rounds 5] [--no-torch]
                                                 [--cache FILE]
    .venv/bin/python bench/costmodel_accuracy.py --fit-on bench/measurements/costmodel_points-znver4.json \
        --predict bench/measurements/costmodel_points-znver3.json [--figures catalogue|derived]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from advisor.costmodel import (CROSS_HARDWARE_FACTOR, Hardware, LatencyModel, Observation, Work, relation,
                              transfer)

THREADS = (1, 2)
BATCHES = (1, 2, 4)
SEQUENCE = 128
MAX_BACKGROUND_CORES = 0.25  # a round during which other processes used more CPU than this is measured again
PATIENCE_S = 240.0  # how long one round or profile waits for a quiet machine before it is kept as it is


@dataclass(frozen=True)
class Point:
    model: str
    threads: int
    batch: int
    work: dict  # Work.to_dict()
    p50_ms: float
    round_p50_ms: tuple[float, ...]  # one per round, to show the noise
    class_ms: dict  # profiler: kernel time per operator class, ms per inference
    background_cores: float = 0.0  # CPU other processes used while this point was measured (mean of its rounds)

    def observation(self, hardware: Hardware, with_profile: bool = True) -> Observation:
        return Observation(Work.from_dict(self.work), self.threads, hardware, self.p50_ms,
                           self.class_ms if with_profile else None)


def build_models(folder: Path, use_torch: bool) -> dict[str, tuple[Path, dict]]:
    import models

    tokens = {"input_ids": (1, SEQUENCE), "attention_mask": (1, SEQUENCE)}
    built = {
        "cnn-small": (models.save(models.tiny_cnn(64, 16), folder / "cnn_small.onnx"), {}),
        "cnn-large": (models.save(models.tiny_cnn(128, 48, seed=1), folder / "cnn_large.onnx"), {}),
        "mlp": (models.save(models.tiny_mlp(512, 2048), folder / "mlp.onnx"), {}),
        "encoder": (models.save(models.tiny_encoder(2000, 256), folder / "encoder.onnx"), tokens),
    }
    if use_torch:
        try:
            sys.path.insert(0, str(REPO / "scripts"))
            import make_models

            for name, builder, shapes in (("mobilenet_v2", make_models.mobilenet, {}),
                                          ("resnet18", make_models.resnet, {}),
                                          ("bert-4l", make_models.bert, {**tokens, "token_type_ids": (1, SEQUENCE)})):
                target = {"bert-4l": "bert_4l_256h.onnx"}.get(name, f"{name}.onnx")
                path = folder / target if (folder / target).exists() else builder(folder)
                built[name] = (path, shapes)
        except ImportError as error:
            print(f"(torch/transformers not available, skipping their models: {error})")
    return built


class _Background:
    """CPU time other processes (and the hypervisor's steal) took while the block ran, in cores."""

    @staticmethod
    def _busy_s() -> float:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self.busy, self.own, self.wall = self._busy_s(), sum(os.times()[:2]), time.monotonic()
        return self

    def __exit__(self, *_):
        wall = max(time.monotonic() - self.wall, 1e-3)
        self.cores = max(0.0, (self._busy_s() - self.busy) - (sum(os.times()[:2]) - self.own)) / wall


def _quiet(block, patience_s: float = PATIENCE_S):
    """Run `block` until it ran while the machine was otherwise (nearly) idle, or `patience_s` ran out; (its
    result, the background cores during it)."""
    give_up = time.monotonic() + patience_s
    while True:
        with _Background() as background:
            result = block()
        if background.cores <= MAX_BACKGROUND_CORES or time.monotonic() > give_up:
            return result, background.cores
        time.sleep(2.0)


def _profile(path: Path, config: dict, feeds: dict, runs: int = 5) -> dict[str, float]:
    """Kernel time per operator class (ms per inference), as tuners.onnxruntime records it for the report."""
    import onnxruntime as ort

    from advisor.opcost import op_class
    from tuners.onnxruntime import providers_for, session_options

    options = session_options(config)
    options.enable_profiling = True
    session = ort.InferenceSession(str(path), options, providers=providers_for(config))
    for _ in range(runs + 2):
        session.run(None, feeds)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink(missing_ok=True)
    # the first two runs are warm-up: keep the last `runs` runs' kernel events
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    cutoff = starts[2] if len(starts) > 2 else 0
    totals: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time") \
                and event.get("ts", 0) >= cutoff:
            totals[op_class(event.get("args", {}).get("op_name", "other"))] += event.get("dur", 0) / 1000.0 / runs
    return dict(totals)


def measure(built: dict, rounds: int, seconds: float, patience_s: float = PATIENCE_S) -> list[Point]:
    """Every (threads, batch) of a model interleaved in one process; a round (and a profile) taken while other
    processes kept a core busy is taken again (up to ATTEMPTS times): on a shared 2-core machine a 2-thread run
    with one core taken measures the neighbour, not the model."""
    import onnxruntime as ort

    from advisor.feeds import make_feeds
    from advisor.measure import HarnessSettings, interleaved_samples
    from advisor.model import ModelSpec, analyze
    from tuners.onnxruntime import providers_for, session_options

    settings = HarnessSettings(warmup=3, min_iterations=10, min_time_s=seconds * len(THREADS) * len(BATCHES),
                               max_time_s=seconds * 40)
    points = []
    for name, (path, shapes) in built.items():
        started = time.monotonic()
        info = analyze(ModelSpec(path, shapes))
        feeds = {b: make_feeds(info, b) for b in BATCHES}
        sessions = {}
        for threads in THREADS:
            config = {"intra_op_threads": threads}  # everything else as in ONNX Runtime's stock session
            sessions[threads] = ort.InferenceSession(str(path), session_options(config),
                                                     providers=providers_for(config))
        runs = {(t, b): (lambda s=sessions[t], f=feeds[b]: s.run(None, f)) for t in THREADS for b in BATCHES}
        medians, loads = collections.defaultdict(list), []
        for _ in range(rounds):
            samples, load = _quiet(functools.partial(interleaved_samples, runs, settings, block=5), patience_s)
            loads.append(load)
            for key, values in samples.items():
                medians[key].append(statistics.median(values))
        for threads in THREADS:
            for batch in BATCHES:
                profile = functools.partial(_profile, path, {"intra_op_threads": threads}, feeds[batch])
                class_ms, _ = _quiet(profile, patience_s)
                points.append(Point(name, threads, batch, Work.of(info, batch).to_dict(),
                                    statistics.median(medians[threads, batch]), tuple(medians[threads, batch]),
                                    class_ms, statistics.mean(loads)))
        print(f"measured {name} in {time.monotonic() - started:.0f} s (background {max(loads):.2f} cores at most)",
              file=sys.stderr)
    return points


def save(points: list[Point], target, path: Path) -> None:
    """The points and the machine they were measured on: its label and its CPU (march, ISA, cores), so that the
    cost model's Hardware can be built for it wherever the file is read (--fit-on / --predict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent == CACHE:
        (path.parent / ".gitignore").write_text("*\n")
    path.write_text(json.dumps({"machine": target.label, "date": time.strftime("%Y-%m-%d %H:%M"),
                                "cpu": target.cpu.to_dict(), "points": [asdict(p) for p in points]}, indent=1))


def load(path: Path) -> tuple[list[Point], str, str]:
    data = json.loads(path.read_text())
    points = [Point(**{**p, "round_p50_ms": tuple(p["round_p50_ms"])}) for p in data["points"]]
    return points, data["machine"], data["date"]


_LABEL = re.compile(r"^(?P<model>.*) \((?P<cores>\d+) cores, (?P<march>[\w.-]+)\)$")


def file_cpu(path: Path, catalog):
    """The CPU a points file was measured on (hwprofiles.targets.CpuInfo) and where that came from: the file's
    `cpu` block, else its machine label (`AMD EPYC (2 cores, znver4)`: model, cores, march; files written before
    the block existed), with the ISA of the catalogue's CPUs of that march and as many vCPUs as cores (a VM shows
    its vCPUs as cores, as on the machines these files came from)."""
    from hwprofiles.targets import CpuInfo

    data = json.loads(path.read_text())
    if "cpu" in data:
        cpu = data["cpu"]
        return CpuInfo(**{**cpu, "isa": tuple(cpu["isa"])}), "the file's cpu block"
    match = _LABEL.match(data["machine"])
    if match is None:
        raise SystemExit(f"{path}: no cpu block and a machine label without '(N cores, march)': {data['machine']!r}")
    model, cores, march = match["model"], int(match["cores"]), match["march"]
    vendor = "amd" if "AMD" in model.upper() else "intel" if "INTEL" in model.upper() else "unknown"
    isa = next((tuple(i.cpu.isa) for i in catalog.instances if i.gpu is None and i.cpu.microarchitecture == march), ())
    return (CpuInfo(model, vendor, "x86_64" if vendor in ("amd", "intel") else "unknown", march, isa, cores, cores,
                    0.0),
            f"the file's label ({march}, {cores} cores; ISA {','.join(isa) or 'unknown'} from the catalogue's {march})")


def file_hardware(path: Path, catalog, figures: str = "catalogue") -> tuple[Hardware, str]:
    """The cost model's Hardware for a points file, built as the ranking builds it for a measured machine
    (advisor.ranking.target_hardware: the catalogue entry of the same march and vCPU count, per-core figures times
    the cores shown, else derived from the ISA), or, with figures="derived", always from the ISA
    (advisor.costmodel.derived_cpu_hardware: FLOP/cycle at an assumed clock)."""
    from advisor.costmodel import derived_cpu_hardware
    from advisor.ranking import target_hardware
    from hwprofiles.targets import Target

    cpu, source = file_cpu(path, catalog)
    if figures == "derived":
        hardware = derived_cpu_hardware(cpu.isa, cpu.physical_cores, cpu.vendor, cpu.microarchitecture)
        how = "derived from ISA at 3 GHz"
    else:
        hardware, how = target_hardware(Target(id="cpu", kind="cpu", cpu=cpu), catalog)
    return hardware, f"{cpu.model}, {cpu.microarchitecture}, {cpu.physical_cores} cores (from {source}); " \
                     f"figures: {how} (peak {hardware.peak_gflops:g} GFLOP/s, {hardware.bandwidth_gbs:g} GB/s)"


def _error(estimate: float, actual: float) -> float:
    return abs(estimate - actual) / actual


def evaluate(points: list[Point], hardware: Hardware) -> tuple[list[tuple], dict[str, list[float]], dict]:
    """Held-out predictions of every kind: (table rows, relative errors by kind, interval coverage by kind)."""
    errors: dict[str, list[float]] = {"threads": [], "threads-own": [], "batch": [], "model": []}
    inside: dict[str, list[bool]] = {kind: [] for kind in errors}
    rows = []

    def fit(training: list[Point]) -> LatencyModel:
        return LatencyModel.fit([p.observation(hardware) for p in training])

    def check(kind: str, name: str, label: str, model: LatencyModel, p: Point, anchor: Point | None) -> None:
        work = Work.from_dict(p.work)
        if anchor is None:
            estimate = model.predict_ms(work, p.threads, hardware)
        else:
            estimate = anchor.p50_ms * model.ratio(Work.from_dict(anchor.work), anchor.threads, hardware, work,
                                                   p.threads, hardware)
        low, high = estimate * model.residual_band[0], estimate * model.residual_band[1]
        inside[kind].append(low <= p.p50_ms <= high)
        errors[kind].append(_error(estimate, p.p50_ms))
        rows.append((kind, name, label, p.threads, p.batch, p.p50_ms, estimate))

    names = sorted({p.model for p in points})
    for name in names:
        mine = [p for p in points if p.model == name]
        for held in THREADS:
            pooled = fit([p for p in points if not (p.model == name and p.threads == held)])
            own = fit([p for p in mine if p.threads != held])  # one thread count: the prior parallel fraction
            for p in (q for q in mine if q.threads == held):
                anchor = next(q for q in mine if q.batch == p.batch and q.threads != held)
                check("threads", name, f"threads {anchor.threads}->{held}", pooled, p, anchor)
                check("threads-own", name, f"threads {anchor.threads}->{held} own", own, p, anchor)
        top = max(BATCHES)
        model = fit([p for p in points if not (p.model == name and p.batch == top)])
        for threads in THREADS:
            anchor = next(q for q in mine if q.threads == threads and q.batch == BATCHES[-2])
            p = next(q for q in mine if q.threads == threads and q.batch == top)
            check("batch", name, f"batch {anchor.batch}->{top}", model, p, anchor)
        model = fit([p for p in points if p.model != name])
        for p in mine:
            check("model", name, "leave-one-model-out", model, p, None)
    return rows, errors, {kind: sum(v) / max(len(v), 1) for kind, v in inside.items()}


@dataclass(frozen=True)
class CrossRow:
    model: str
    threads: int
    batch: int
    fit_ms: float  # measured on the fitted machine (A): the anchor
    measured_ms: float  # measured on the predicted machine (B)
    pooled_ms: float  # anchored on A's point, moved with the fit on all of A's points
    pooled_interval: tuple[float, float]  # the interval transfer() gives
    own_ms: float  # anchored, moved with a fit on A's points of this model only (as the ranking fits one model)
    own_interval: tuple[float, float]
    unanchored_ms: float  # the fit on all of A's points predicting B from the analysis alone (no measurement)
    needed: dict  # "pooled", "own": the cross-hardware factor that would just have put this point inside


def cross_evaluate(fit_points: list[Point], fit_hw: Hardware, predict_points: list[Point],
                   predict_hw: Hardware) -> tuple[list[CrossRow], str, dict[str, LatencyModel]]:
    """Every point measured on B predicted from A's points: anchored on A's measurement of the same model, threads
    and batch and moved with advisor.costmodel.transfer (as the ranking moves a measurement to another instance;
    the measured interval is taken as the point itself, so the interval is the fit's residual band times the
    cross-hardware factor only), with a fit on all of A's points ("pooled") and with a fit on that model's points
    only ("own"); and without an anchor, from the pooled fit alone. (rows, relation of B to A, the fits)"""
    pooled = LatencyModel.fit([p.observation(fit_hw) for p in fit_points])
    fits = {"pooled": pooled}
    rows = []
    for name in sorted({p.model for p in predict_points}):
        mine = [p for p in fit_points if p.model == name]
        if not mine:
            continue
        own = fits[name] = LatencyModel.fit([p.observation(fit_hw) for p in mine])
        for b in (p for p in predict_points if p.model == name):
            a = next((p for p in mine if (p.threads, p.batch) == (b.threads, b.batch)), None)
            if a is None:
                continue
            work = Work.from_dict(b.work)
            moved, needed = {}, {}
            for label, model in (("pooled", pooled), ("own", own)):
                moved[label] = transfer(a.p50_ms, (a.p50_ms, a.p50_ms), model, Work.from_dict(a.work), fit_hw,
                                        a.threads, predict_hw, b.threads)
                low, high = (moved[label][0] * end for end in model.residual_band)
                needed[label] = max(1.0, low / b.p50_ms, b.p50_ms / high)
            rows.append(CrossRow(name, b.threads, b.batch, a.p50_ms, b.p50_ms, moved["pooled"][0], moved["pooled"][1],
                                 moved["own"][0], moved["own"][1], pooled.predict_ms(work, b.threads, predict_hw),
                                 needed))
    return rows, relation(fit_hw, predict_hw), fits


def _inside(value: float, interval: tuple[float, float]) -> bool:
    return interval[0] <= value <= interval[1]


def report_cross(fit_path: Path, predict_path: Path, figures: str) -> int:
    from hwprofiles.catalog import load_catalog

    catalog = load_catalog()
    fit_points, fit_machine, fit_date = load(fit_path)
    predict_points, predict_machine, predict_date = load(predict_path)
    fit_hw, fit_about = file_hardware(fit_path, catalog, figures)
    predict_hw, predict_about = file_hardware(predict_path, catalog, figures)
    print(f"fit on:  {fit_path.name}: {fit_machine}, measured {fit_date}\n         {fit_about}")
    print(f"predict: {predict_path.name}: {predict_machine}, measured {predict_date}\n         {predict_about}")
    for label, points in (("fit on", fit_points), ("predict", predict_points)):
        print(f"background load ({label}): other processes used {max(p.background_cores for p in points):.2f} "
              f"cores at most, {sum(p.background_cores > MAX_BACKGROUND_CORES for p in points)} of {len(points)} "
              f"points above {MAX_BACKGROUND_CORES}")
    rows, kind, fits = cross_evaluate(fit_points, fit_hw, predict_points, predict_hw)
    factor = CROSS_HARDWARE_FACTOR[kind]
    pooled = fits["pooled"]
    print(f"relation: {kind} (CROSS_HARDWARE_FACTOR {factor}); pooled fit on {pooled.n} points: parallel fraction "
          f"{pooled.parallel_fraction:g}, residual band {pooled.residual_band[0]:.3f}-{pooled.residual_band[1]:.3f}, "
          + ", ".join(f"{t} {v:.3g}" for t, v in pooled.coefficients.items()))
    for note in pooled.notes:
        print(f"  note: {note}")
    own = {name: fit for name, fit in fits.items() if name != "pooled"}
    print("own-model fits (parallel fraction, residual band): " + ", ".join(
        f"{name} {fit.parallel_fraction:g}{' (edge)' if fit.parallel_fraction_at_edge else ''} "
        f"{fit.residual_band[0]:.2f}-{fit.residual_band[1]:.2f}" for name, fit in own.items()))
    print(f"\n{'model':<13} {'thr':>3} {'batch':>5} {'A ms':>9} {'B measured':>11} {'B pooled':>9} "
          f"{'meas/pred':>9} {'in':>3} {'B own':>9} {'in':>3} {'unanch.':>9} {'B/A':>6}")
    for r in rows:
        print(f"{r.model:<13} {r.threads:>3} {r.batch:>5} {r.fit_ms:>9.3f} {r.measured_ms:>11.3f} {r.pooled_ms:>9.3f} "
              f"{r.measured_ms / r.pooled_ms:>9.3f} {'y' if _inside(r.measured_ms, r.pooled_interval) else 'n':>3} "
              f"{r.own_ms:>9.3f} {'y' if _inside(r.measured_ms, r.own_interval) else 'n':>3} "
              f"{r.unanchored_ms:>9.3f} {r.measured_ms / r.fit_ms:>6.2f}")

    def mape(predicted, chosen) -> float:
        return statistics.mean(_error(predicted(r), r.measured_ms) for r in chosen) * 100

    variants = {"anchored, pooled fit": lambda r: r.pooled_ms, "anchored, own-model fit": lambda r: r.own_ms,
                "unanchored (analysis only)": lambda r: r.unanchored_ms,
                "same latency as A (no model)": lambda r: r.fit_ms}
    print(f"\nMAPE by model {'pooled':>7} {'own':>7} {'unanch.':>8} {'same':>7}   measured/predicted min-median-max "
          f"(pooled; own)   in interval (pooled, own)")
    for name in sorted({r.model for r in rows}):
        mine = [r for r in rows if r.model == name]
        spans = []
        for predicted in (lambda r: r.pooled_ms, lambda r: r.own_ms):
            ratios = [r.measured_ms / predicted(r) for r in mine]
            spans.append(f"{min(ratios):.2f}-{statistics.median(ratios):.2f}-{max(ratios):.2f}")
        cells = " ".join(f"{mape(f, mine):>6.1f}%" for f in variants.values())
        print(f"{name:<13} {cells}   {spans[0]}; {spans[1]}   "
              f"{sum(_inside(r.measured_ms, r.pooled_interval) for r in mine)}/{len(mine)}, "
              f"{sum(_inside(r.measured_ms, r.own_interval) for r in mine)}/{len(mine)}")
    for label, predicted in variants.items():
        errors = [_error(predicted(r), r.measured_ms) for r in rows]
        print(f"MAPE {label:<27}: {statistics.mean(errors) * 100:5.1f}% over {len(errors)} points "
              f"(median {statistics.median(errors) * 100:.1f}%, worst {max(errors) * 100:.1f}%)")
    for label, key, predicted, interval in (("pooled", "pooled", lambda r: r.pooled_ms, lambda r: r.pooled_interval),
                                            ("own-model", "own", lambda r: r.own_ms, lambda r: r.own_interval)):
        ratios = sorted(r.measured_ms / predicted(r) for r in rows)
        share = sum(_inside(r.measured_ms, interval(r)) for r in rows) / len(rows)
        needed = [r.needed[key] for r in rows]
        print(f"{label} fit: measured / predicted median {statistics.median(ratios):.3f}, range {ratios[0]:.3f}-"
              f"{ratios[-1]:.3f}; interval coverage (residual band x factor {factor}) {share * 100:.0f}% of "
              f"{len(rows)} points; factor that would cover 95%: {float(np.quantile(needed, 0.95)):.2f} "
              f"(all: {max(needed):.2f})")
    overall = statistics.mean(_error(r.pooled_ms, r.measured_ms) for r in rows) * 100
    print(f"cross-hardware MAPE ({fit_machine} -> {predict_machine}, anchored): {overall:.1f}%")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE / "costmodel_points.json")
    parser.add_argument("--remeasure", action="store_true", help="measure again and overwrite the cache")
    parser.add_argument("--models", help="with --remeasure: only these models (comma-separated), merged into the cache")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.15, help="minimum time per configuration per round")
    parser.add_argument("--patience", type=float, default=PATIENCE_S,
                        help="seconds a round waits for a quiet machine before it is kept as measured")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--fit-on", type=Path, metavar="A.json",
                        help="cross-hardware mode: fit on this points file (a --cache file, or bench/measurements/)")
    parser.add_argument("--predict", type=Path, metavar="B.json",
                        help="cross-hardware mode: predict this points file's points from --fit-on's")
    parser.add_argument("--figures", choices=("catalogue", "derived"), default="catalogue",
                        help="cross-hardware mode: each machine's peak and bandwidth as the ranking takes them "
                             "(catalogue entry of its march) or derived from its ISA at 3 GHz")
    args = parser.parse_args()
    if args.fit_on or args.predict:
        if not (args.fit_on and args.predict):
            parser.error("--fit-on and --predict go together")
        return report_cross(args.fit_on, args.predict, args.figures)
    from hwprofiles.catalog import load_catalog
    from hwprofiles.targets import detect_targets

    target = detect_targets()[0]
    if args.remeasure or not args.cache.exists():
        built = build_models(CACHE / "models", not args.no_torch)
        if args.models:
            built = {name: built[name] for name in args.models.split(",")}
        points = measure(built, args.rounds, args.seconds, args.patience)
        if args.models and args.cache.exists():
            points = [p for p in load(args.cache)[0] if p.model not in built] + points
        save(points, target, args.cache)
    points, machine, date = load(args.cache)
    hardware, figures = file_hardware(args.cache, load_catalog())  # the machine the points came from
    print(f"machine: {machine}, measured {date}; {figures}")
    spread = [max(p.round_p50_ms) / min(p.round_p50_ms) - 1 for p in points if len(p.round_p50_ms) > 1]
    loaded = [p for p in points if p.background_cores > MAX_BACKGROUND_CORES]
    print(f"background load: other processes used {max(p.background_cores for p in points):.2f} cores at most; "
          f"{len(loaded)} of {len(points)} points measured above {MAX_BACKGROUND_CORES} cores")
    if spread:
        print(f"noise: median spread of round medians {statistics.median(spread) * 100:.1f}% "
              f"(max {max(spread) * 100:.1f}%) over {len(spread)} points")
    rows, errors, coverage = evaluate(points, hardware)
    print(f"{'model':<13} {'held out':<20} {'thr':>3} {'batch':>5} {'measured ms':>12} {'predicted ms':>13} "
          f"{'error':>7}")
    for _, name, held, threads, batch, actual, estimate in rows:
        print(f"{name:<13} {held:<20} {threads:>3} {batch:>5} {actual:>12.3f} {estimate:>13.3f} "
              f"{_error(estimate, actual) * 100:>6.1f}%")
    print(f"\nMAPE by model  {'p50 ms (1t b1)':>14} " + " ".join(f"{kind:>11}" for kind in errors))
    for name in sorted({row[1] for row in rows}):
        base = next(p.p50_ms for p in points if p.model == name and p.threads == 1 and p.batch == 1)
        cells = [statistics.mean(_error(r[6], r[5]) for r in rows if r[0] == kind and r[1] == name) * 100
                 for kind in errors]
        print(f"{name:<14} {base:>14.3f} " + " ".join(f"{cell:>10.1f}%" for cell in cells))
    for kind, values in errors.items():
        print(f"MAPE held-out {kind:<11}: {statistics.mean(values) * 100:5.1f}% over {len(values)} predictions "
              f"(median {statistics.median(values) * 100:.1f}%, worst {max(values) * 100:.1f}%; "
              f"{coverage[kind] * 100:.0f}% inside the fit's residual band)")
    everything = [e for values in errors.values() for e in values]
    print(f"costmodel MAPE: {statistics.mean(everything) * 100:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
