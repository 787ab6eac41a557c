"""Are the advisor's published numbers true? Checked against measurements it did not make.

For each model: `advisor recommend` runs as a user runs it (the CLI, with its artifact). Then, in alternating
rounds, the recommended artifact and a stock ONNX Runtime session (`InferenceSession(model)`, every default) are
each timed alone in a fresh Python process, with this script's own timing loop (not the advisor's harness), on
the same inputs at the batch size the recommendation is served at. Two ratios are printed:

  speed   artifact p50 / stock p50, per round, median (range) over the rounds: must be <= 1.0 within the
          round-to-round noise (the advice is never slower than deploying the model as it is);
  truth   the recommended measured row's processing latency (its SLO percentile, batching wait removed) against
          the same percentile of the artifact's samples pooled over the rounds: the independent figure must lie
          within the interval the report gives for that row.

    .venv/bin/python bench/truth.py                          # the bundled example, resnet and mlp
    .venv/bin/python bench/truth.py --models example --rounds 3 --out /tmp/truth.json

resnet and mlp are built by scripts/make_models.py (transformers / torch architectures, random weights) into
--models-dir the first time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

# name -> (model file relative to the models folder or the repository, SLO, extra recommend arguments)
MODELS = {
    "example": (REPO / "examples" / "tiny_cnn.onnx", "20ms", []),
    "resnet": (Path("resnet18.onnx"), "400ms", []),
    "mlp": (Path("mlp.onnx"), "20ms", []),
    "bert": (Path("bert_4l_256h.onnx"), "200ms", ["--input-shape", "input_ids=1,128", "--input-shape",
                                           "attention_mask=1,128", "--input-shape", "token_type_ids=1,128"]),
}
QUIET_CPU_PERCENT = 25.0  # machine-wide CPU use under which a timing child starts
QUIET_MAX_WAIT_S = 60.0


# ---- the timing child: its own loop, nothing from the advisor's harness ----

def time_alone(kind: str, path: Path, feeds_path: Path, seconds: float, min_calls: int) -> list[float]:
    """Load one runtime in this fresh process and time it: 1 s of warm-up, then every call for `seconds` (and at
    least `min_calls`). Returns milliseconds per call."""
    with np.load(feeds_path) as data:
        feeds = {name: data[name] for name in data.files}
    if kind == "stock":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def call():
            return session.run(None, feeds)
    else:
        from advisor.runtime import load

        _, predict = load(path)

        def call():
            return predict(feeds)
    warm_until = time.perf_counter() + 1.0
    while time.perf_counter() < warm_until:
        call()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < min_calls:
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples


# ---- the driver ----

@dataclass
class ModelResult:
    model: str
    instance: str
    backend: str
    config: dict
    batch_size: int
    percentile: str
    reported_ms: float  # the row's processing latency at its batch size (SLO percentile, no batching wait)
    reported_interval: tuple[float, float]
    independent_ms: float  # the same percentile of the artifact's samples, pooled over the rounds
    independent_samples: int
    within_interval: bool
    speed_ratios: list[float]  # artifact p50 / stock p50, one per round
    artifact_p50_ms: list[float]
    stock_p50_ms: list[float]
    recommend_wall_s: float
    budget_s: float


def wait_for_quiet_machine() -> None:
    import psutil

    deadline = time.monotonic() + QUIET_MAX_WAIT_S
    while psutil.cpu_percent(interval=0.5) > QUIET_CPU_PERCENT and time.monotonic() < deadline:
        pass


def timed_child(kind: str, path: Path, feeds: Path, seconds: float, min_calls: int) -> list[float]:
    wait_for_quiet_machine()
    done = subprocess.run([sys.executable, __file__, "--time", kind, str(path), str(feeds), str(seconds),
                           str(min_calls)], capture_output=True, text=True, cwd=REPO, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"timing child for {kind} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def percentile_of(samples: list[float], name: str) -> float:
    return float(np.percentile(samples, float(name.lstrip("p"))))


def recommend(model: Path, slo: str, extra: list[str], budget: str, out: Path) -> tuple[dict, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from advisor.cli import main; main()", "recommend", str(model),
                           "--slo", slo, "--budget", budget, "--out", str(out), "--quiet", *extra],
                          capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"advisor recommend {model.name} exited {done.returncode}:\n{done.stdout[-1500:]}"
                         f"\n{done.stderr[-1500:]}")
    return json.loads((out / "report.json").read_text()), wall


def measured_row(report: dict) -> dict:
    """The recommended row when it was measured here, else the best recommendable measured row: the figure the
    artifact (built on this machine) can be held to."""
    recommendation = report["recommendation"]
    if recommendation["source"] == "measured":
        return recommendation
    return next(row for row in report["ranking"] if row["source"] == "measured" and row["recommendable"]
                and row["trial_id"] == recommendation["trial_id"])


def check_model(name: str, model: Path, slo: str, extra: list[str], args, scratch: Path) -> ModelResult:
    from advisor.runtime import open_artifact, sample_feeds
    from advisor.units import parse_duration_s

    report, wall = recommend(model, slo, extra, args.budget, scratch / name)
    row = measured_row(report)
    artifact = open_artifact(Path(report["recommendation"]["artifact"]), scratch / f"{name}-artifact")
    manifest = json.loads((artifact / "manifest.json").read_text())
    feeds_path = scratch / f"{name}-feeds.npz"
    np.savez(feeds_path, **sample_feeds(manifest))
    percentile = report["slo"]["percentile"]
    pooled: list[float] = []
    artifact_p50, stock_p50 = [], []
    for round_index in range(args.rounds):
        order = ("artifact", "stock") if round_index % 2 == 0 else ("stock", "artifact")
        for kind in order:
            samples = timed_child(kind, artifact if kind == "artifact" else model, feeds_path, args.seconds,
                                  args.min_calls)
            (artifact_p50 if kind == "artifact" else stock_p50).append(statistics.median(samples))
            if kind == "artifact":
                pooled += samples
    wait = row.get("batching_wait_ms") or 0.0
    reported = row["processing_ms"] if row.get("processing_ms") is not None else row["latency_ms"] - wait
    low, high = (bound - wait for bound in row["latency_ms_interval"])
    independent = percentile_of(pooled, percentile)
    return ModelResult(
        model=name, instance=row["instance"], backend=row["backend"], config=row["config"],
        batch_size=row["batch_size"], percentile=percentile, reported_ms=reported, reported_interval=(low, high),
        independent_ms=independent, independent_samples=len(pooled), within_interval=low <= independent <= high,
        speed_ratios=[a / s for a, s in zip(artifact_p50, stock_p50)], artifact_p50_ms=artifact_p50,
        stock_p50_ms=stock_p50, recommend_wall_s=round(wall, 1), budget_s=parse_duration_s(args.budget))


def model_path(name: str, models_dir: Path) -> Path:
    return built_model(name, MODELS[name][0], models_dir)


def built_model(name: str, relative: Path, models_dir: Path) -> Path:
    """The model file, built by scripts/make_models.py into `models_dir` the first time (absolute: as it is)."""
    if relative.is_absolute():
        return relative
    path = models_dir / relative
    if not path.exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_models.py"), "--out", str(models_dir),
                        "--models", name], check=True, cwd=REPO)
    return path


def print_result(result: ModelResult) -> None:
    ratios = result.speed_ratios
    low, high = result.reported_interval
    print(f"{result.model}: {result.backend} {json.dumps(result.config, sort_keys=True)} at batch "
          f"{result.batch_size} ({result.instance})")
    print(f"  speed  artifact / stock p50: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-"
          f"{max(ratios):.3f}, {len(ratios)} rounds; artifact {statistics.median(result.artifact_p50_ms):.4g} ms, "
          f"stock {statistics.median(result.stock_p50_ms):.4g} ms)")
    print(f"  truth  {result.percentile}: reported {result.reported_ms:.4g} ms [{low:.4g}, {high:.4g}], "
          f"independent {result.independent_ms:.4g} ms ({result.independent_samples} samples), ratio "
          f"{result.independent_ms / result.reported_ms:.3f}, {'within' if result.within_interval else 'OUTSIDE'}"
          f" the interval")
    print(f"  budget {result.budget_s:.0f} s, recommend took {result.recommend_wall_s:.0f} s "
          f"({result.recommend_wall_s / result.budget_s:.2f}x)")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--time":
        kind, path, feeds, seconds, min_calls = sys.argv[2:7]
        print(json.dumps(time_alone(kind, Path(path), Path(feeds), float(seconds), int(min_calls))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="example,resnet,mlp", help=f"from {','.join(MODELS)}")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--budget", default="2m", help="advisor recommend --budget")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per child")
    parser.add_argument("--min-calls", type=int, default=200)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--work", type=Path,
                        help="keep the runs and artifacts in this folder (default: a temporary one)")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}")
    from hwprofiles.targets import detect_targets

    cpu = next(t for t in detect_targets() if t.kind == "cpu")
    print(f"machine: {cpu.label}; {time.strftime('%Y-%m-%d %H:%M %Z')}; Python {platform.python_version()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="advisor-truth-") as temporary:
        scratch = args.work or temporary
        Path(scratch).mkdir(parents=True, exist_ok=True)
        for name in names:
            _, slo, extra = MODELS[name]
            result = check_model(name, model_path(name, args.models_dir), slo, extra, args, Path(scratch))
            print_result(result)
            results.append(result)
    if args.out:
        args.out.write_text(json.dumps({"machine": cpu.label, "cpu": cpu.cpu.to_dict(),
                                        "date": time.strftime("%Y-%m-%d %H:%M"), "args": {
                                            k: str(v) for k, v in vars(args).items()},
                                        "results": [asdict(r) for r in results]}, indent=1))
    speed_ok = all(statistics.median(r.speed_ratios) <= 1.0 or min(r.speed_ratios) <= 1.0 for r in results)
    truth_ok = all(r.within_interval for r in results)
    print(f"speed: {'held' if speed_ok else 'NOT HELD'} (median <= 1.0, or a round at <= 1.0 within noise); "
          f"truth: {'held' if truth_ok else 'NOT HELD'}")
    return 0 if speed_ok and truth_ok else 1


if __name__ == "__main__":
    sys.exit(main())
