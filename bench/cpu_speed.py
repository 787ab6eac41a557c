"""CPU speed-ups the advisor finds, checked outside it: each backend's best accepted candidate against stock ONNX
Runtime, with the accuracy it kept.

For each model, `advisor recommend` runs as a user runs it, with ONNX Runtime and OpenVINO, calibration data and
evaluation data (--calibration-data, --eval-data: random inputs of the model's shapes; the expected results are the
fp32 reference's own, so the metric measures agreement with fp32: top-1 agreement for classifiers, mean cosine
similarity otherwise). Then, for each backend, its best accepted candidate of the search (fastest search-phase median
at batch 1 among those that passed the accuracy gate) is exported as the deployable artifact, and the artifact and a
stock ONNX Runtime session (`InferenceSession(model)`, every default) are each timed alone in a fresh Python
process with bench/truth.py's own timing loop (not the advisor's harness), in alternating rounds, on the same inputs.
Printed per backend: its latency over stock's (median and range over the rounds), its precision and its accuracy drop.

    .venv/bin/python bench/cpu_speed.py                            # example, mobilenet, resnet, bert
    .venv/bin/python bench/cpu_speed.py --models example --budget 1m --rounds 2 --out /tmp/speed.json

The models other than the bundled example are built by scripts/make_models.py (torchvision / transformers
architectures with random weights) into --models-dir the first time. The goal (issue 16): a best accepted
candidate at <= 0.8x stock latency on most models on an AVX-512 machine.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import truth  # noqa: E402  (bench/truth.py: the independent timing child)

BERT_SHAPES = ["--input-shape", "input_ids=1,128", "--input-shape", "attention_mask=1,128",
               "--input-shape", "token_type_ids=1,128"]
# name -> (model file relative to --models-dir or absolute, extra recommend arguments)
MODELS = {
    "example": (REPO / "examples" / "tiny_cnn.onnx", []),
    "mobilenet": (Path("mobilenet_v2.onnx"), []),
    "resnet": (Path("resnet18.onnx"), []),
    "bert": (Path("bert_4l_256h.onnx"), BERT_SHAPES),
}
BACKENDS = ("onnxruntime", "openvino")
EVAL_SAMPLES = 64
CALIBRATION_SAMPLES = 32
# the largest drop accepted: 1 sample in 64 for top-1 agreement with fp32; for the mean cosine similarity, 0.002
# (cos 0.998, a relative L2 error of about 0.06: the counterpart of the default 0.05 output tolerance)
MAX_DROP = {"top-1": 0.02, "cosine": 0.002}
GOAL_RATIO = 0.8


@dataclass
class BackendResult:
    backend: str
    config: dict
    precision: str
    search_p50_ms: float
    max_rel_error: float | None
    accuracy: dict | None
    ratios: list[float] = field(default_factory=list)  # artifact p50 / stock p50, one per round
    artifact_p50_ms: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


@dataclass
class ModelResult:
    model: str
    stock_p50_ms: list[float]
    backends: list[BackendResult]
    recommend_wall_s: float

    def best(self) -> BackendResult | None:
        return min(self.backends, key=lambda b: b.ratio, default=None)


def user_data(model: Path, shapes: dict, folder: Path) -> tuple[Path, Path, str]:
    """Calibration inputs and eval samples with the fp32 reference's results as the expected ones, and which
    default metric those expected results select (top-1 for a classifier's scores, else cosine)."""
    from advisor.executor import reference_session
    from advisor.feeds import make_feeds
    from advisor.model import ModelSpec, analyze

    info = analyze(ModelSpec(model, shapes))
    session = reference_session(model)
    calibration, evaluation = folder / "calibration", folder / "eval"
    for path in (calibration, evaluation):
        path.mkdir(parents=True, exist_ok=True)
    for index in range(CALIBRATION_SAMPLES):
        np.savez(calibration / f"{index:04d}.npz", **make_feeds(info, 1, seed=10_000 + index))
    metric = "cosine"
    for index in range(EVAL_SAMPLES):
        feeds = make_feeds(info, 1, seed=20_000 + index)
        first = np.asarray(session.run(None, feeds)[0])
        # a classifier's scores (one row of classes): the expected result is the fp32 class, the metric top-1
        if first.ndim == 2 and first.shape[1] > 1:
            metric, expected = "top-1", np.int64(np.argmax(first))
        else:
            expected = first[0]
        np.savez(evaluation / f"{index:04d}.npz", **feeds, expected=expected)
    return calibration, evaluation, metric


def recommend(model: Path, extra: list[str], budget: str, out: Path, calibration: Path,
              evaluation: Path, max_drop: float) -> tuple[dict, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from advisor.cli import main; main()", "recommend", str(model),
                           "--slo", "10s", "--budget", budget, "--batch-sizes", "1", "--backends", ",".join(BACKENDS),
                           "--calibration-data", str(calibration), "--eval-data", str(evaluation),
                           "--max-accuracy-drop", str(max_drop), "--no-artifact", "--out", str(out), "--quiet",
                           *extra], capture_output=True, text=True, cwd=REPO)
    if done.returncode not in (0, 3):
        raise SystemExit(f"advisor recommend {model.name} exited {done.returncode}:\n{done.stdout[-1500:]}"
                         f"\n{done.stderr[-1500:]}")
    return json.loads((out / "report.json").read_text()), time.monotonic() - started


def best_accepted(report: dict, backend: str) -> dict | None:
    """The backend's fastest search-phase trial at batch 1 that passed its checks (the accuracy gate included)."""
    trials = [t for t in report["trials"] if t["backend"] == backend and t["phase"] == "search"
              and t["status"] == "ok" and t["batch_size"] == 1 and t.get("latency_ms")]
    return min(trials, key=lambda t: t["latency_ms"]["p50"], default=None)


def export(trial: dict, model: Path, shapes: dict, run: Path, dest: Path) -> Path:
    """The candidate's deployable artifact, exported as `recommend` would (its calibration data included)."""
    from advisor.artifact import ArtifactRequest, build_artifact
    from advisor.model import ModelSpec, analyze
    from advisor.slo import Slo
    from advisor.trials import Trial
    from hwprofiles.targets import detect_targets
    from tuners.base import TuneContext

    target = next(t for t in detect_targets() if t.id == trial["target"])
    calibration = run / "data" / "calibration.npz"
    ctx = TuneContext(info=analyze(ModelSpec(model, shapes)), target=target,
                      workdir=run / "work" / f"{trial['backend']}-{target.id.replace(':', '')}",
                      cache_dir=dest.parent / "cache", budget_s=600, tolerance=0.05, batch_size=1,
                      calibration_path=calibration if calibration.exists() else None)
    request = ArtifactRequest(Trial.from_dict(trial), ctx, Slo(10_000.0, "p99"), {"instance": "this machine"})
    return build_artifact(request, dest, timeout_s=900, log_path=run / "workers.log")


def shapes_of(extra: list[str]) -> dict:
    pairs = [extra[i + 1] for i in range(0, len(extra), 2) if extra[i] == "--input-shape"]
    return {name: tuple(int(v) for v in dims.split(",")) for name, dims in (p.split("=") for p in pairs)}


def check_model(name: str, model: Path, extra: list[str], args, scratch: Path) -> ModelResult:
    from advisor.runtime import sample_feeds

    shapes = shapes_of(extra)
    calibration, evaluation, metric = user_data(model, shapes, scratch / f"{name}-data")
    run = scratch / name
    report, wall = recommend(model, extra, args.budget, run, calibration, evaluation, MAX_DROP[metric])
    results, artifacts = [], {}
    for backend in BACKENDS:
        trial = best_accepted(report, backend)
        if trial is None:
            print(f"  {backend}: no accepted candidate")
            continue
        artifacts[backend] = export(trial, model, shapes, run, scratch / f"{name}-{backend}-artifact")
        results.append(BackendResult(backend, trial["config"], trial["config"].get("precision", "fp32"),
                                     trial["latency_ms"]["p50"], trial.get("max_rel_error"),
                                     trial.get("details", {}).get("accuracy")))
    if not results:
        return ModelResult(name, [], [], round(wall, 1))
    manifest = json.loads((next(iter(artifacts.values())) / "manifest.json").read_text())
    feeds_path = scratch / f"{name}-feeds.npz"
    np.savez(feeds_path, **sample_feeds(manifest))
    stock_p50 = []
    for round_index in range(args.rounds):
        kinds = ["stock", *artifacts]
        order = kinds if round_index % 2 == 0 else kinds[::-1]
        timed = {}
        for kind in order:
            path = model if kind == "stock" else artifacts[kind]
            samples = truth.timed_child("stock" if kind == "stock" else "artifact", path, feeds_path, args.seconds,
                                        args.min_calls)
            timed[kind] = statistics.median(samples)
        stock_p50.append(timed["stock"])
        for result in results:
            result.artifact_p50_ms.append(timed[result.backend])
            result.ratios.append(timed[result.backend] / timed["stock"])
    return ModelResult(name, stock_p50, results, round(wall, 1))


def print_result(result: ModelResult) -> None:
    stock = statistics.median(result.stock_p50_ms) if result.stock_p50_ms else float("nan")
    print(f"{result.model}: stock ONNX Runtime p50 {stock:.4g} ms (recommend took {result.recommend_wall_s:.0f} s)")
    for b in result.backends:
        accuracy = b.accuracy or {}
        drop = f"{accuracy['metric']} drop {accuracy['drop']:.3g}" if accuracy else "no eval"
        print(f"  {b.backend:12s} {b.precision:13s} {b.ratio:.3f}x stock (range {min(b.ratios):.3f}-"
              f"{max(b.ratios):.3f}, {len(b.ratios)} rounds; {statistics.median(b.artifact_p50_ms):.4g} ms); "
              f"max rel. error {b.max_rel_error if b.max_rel_error is not None else float('nan'):.3g}, {drop}; "
              f"{json.dumps({k: v for k, v in b.config.items() if k not in ('precision',)}, sort_keys=True)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"from {','.join(MODELS)}")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--budget", default="3m", help="advisor recommend --budget per model")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per child")
    parser.add_argument("--min-calls", type=int, default=50)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--work", type=Path, help="keep runs and artifacts here (default: a temporary folder)")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if unknown := [n for n in names if n not in MODELS]:
        parser.error(f"unknown model(s) {unknown}")
    from hwprofiles.targets import detect_targets

    cpu = next(t for t in detect_targets() if t.kind == "cpu")
    print(f"machine: {cpu.label}; ISA {' '.join(cpu.cpu.isa)}; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"Python {platform.python_version()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="advisor-cpu-speed-") as temporary:
        scratch = Path(args.work or temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        for name in names:
            path, extra = MODELS[name]
            result = check_model(name, truth.built_model(name, path, args.models_dir), extra, args, scratch)
            print_result(result)
            results.append(result)
    reached = [r.model for r in results if r.best() is not None and r.best().ratio <= GOAL_RATIO]
    print(f"cpu speed: best accepted candidate <= {GOAL_RATIO}x stock on {len(reached)}/{len(results)} models "
          f"({', '.join(reached) or 'none'})")
    if args.out:
        args.out.write_text(json.dumps({
            "machine": cpu.label, "cpu": cpu.cpu.to_dict(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "args": {k: str(v) for k, v in vars(args).items()}, "max_accuracy_drop": MAX_DROP,
            "results": [{**asdict(r), "backends": [{**asdict(b), "ratio": b.ratio} for b in r.backends]}
                        for r in results]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
