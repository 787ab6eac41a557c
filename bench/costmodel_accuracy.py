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

    .venv/bin/python bench/costmodel_accuracy.py [--remeasure [--models mlp,encoder]] [--rounds 5] [--no-torch]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from advisor.costmodel import Hardware, LatencyModel, Observation, Work

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


def save(points: list[Point], machine: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / ".gitignore").write_text("*\n")
    path.write_text(json.dumps({"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M"),
                                "points": [asdict(p) for p in points]}, indent=1))


def load(path: Path) -> tuple[list[Point], str, str]:
    data = json.loads(path.read_text())
    points = [Point(**{**p, "round_p50_ms": tuple(p["round_p50_ms"])}) for p in data["points"]]
    return points, data["machine"], data["date"]


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
    args = parser.parse_args()
    from advisor.ranking import target_hardware
    from hwprofiles.catalog import load_catalog
    from hwprofiles.targets import detect_targets

    target = detect_targets()[0]
    hardware, figures = target_hardware(target, load_catalog())
    if args.remeasure or not args.cache.exists():
        built = build_models(CACHE / "models", not args.no_torch)
        if args.models:
            built = {name: built[name] for name in args.models.split(",")}
        points = measure(built, args.rounds, args.seconds, args.patience)
        if args.models and args.cache.exists():
            points = [p for p in load(args.cache)[0] if p.model not in built] + points
        save(points, target.label, args.cache)
    points, machine, date = load(args.cache)
    print(f"machine: {machine}, measured {date}; figures: {figures} (peak {hardware.peak_gflops:g} GFLOP/s, "
          f"{hardware.bandwidth_gbs:g} GB/s, {hardware.cores} cores)")
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
