"""The pytorch backend's candidates against stock ONNX Runtime on this CPU, each timed alone in a fresh process.

For each model (the bundled tiny CNN, and resnet / mobilenet / bert / mlp built by scripts/make_models.py into
--models-dir the first time), in alternating rounds: stock ONNX Runtime (`InferenceSession(model)`, every default)
and each PyTorch candidate (eager, torch.compile, bf16 autocast where the CPU computes bf16, channels-last for
convolutional models), one fresh Python process per (candidate, round), built by the backend's own `build` (an ONNX
source: converted by onnx2torch; compilation happens before timing), then this script's own loop: 1 s of warm-up,
then every call for --seconds. Printed: per candidate, its p50 over stock's p50 in the same round, median (range)
over the rounds. Results go to bench/results/pytorch-vs-ort-DATE.json.

    .venv/bin/python bench/pytorch_vs_ort.py --models example --rounds 2 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from truth import model_path, wait_for_quiet_machine  # noqa: E402

MODEL_NAMES = ("example", "resnet", "mobilenet", "bert", "mlp")
EXTRA_MODELS = {"mobilenet": Path("mobilenet_v2.onnx")}
# models with dynamic axes beyond the batch: the shapes they are timed at (by file name)
INPUT_SHAPES = {"bert_4l_256h.onnx": {name: (1, 128) for name in ("input_ids", "attention_mask", "token_type_ids")}}


def source_of(path: Path) -> str | None:
    """The model's PyTorch source when scripts/make_models.py kept it (NAME-hf beside NAME.onnx): the backend then
    runs the original transformers module, as for a user's Hugging Face SOURCE; else the ONNX model is converted."""
    folder = path.with_name(f"{path.stem}-hf")
    return str(folder) if (folder / "config.json").is_file() else None


def spec_of(path: Path):
    from advisor.model import ModelSpec

    return ModelSpec(path, INPUT_SHAPES.get(path.name, {}))


def candidates(path: Path) -> dict[str, dict]:
    """The PyTorch configurations compared for this model on this CPU (baseline_config plus one change each)."""
    from advisor.model import analyze
    from hwprofiles.targets import detect_targets
    from tuners.pytorch import baseline_config, has_convolutions

    info, cpu = analyze(spec_of(path)), detect_targets()[0]
    chosen = {"eager": baseline_config(), "compile": {**baseline_config(), "mode": "compile"}}
    if cpu.cpu.computes_bf16:
        chosen["eager-bf16"] = {**baseline_config(), "precision": "bf16"}
        chosen["compile-bf16"] = {**baseline_config(), "mode": "compile", "precision": "bf16"}
    if has_convolutions(info.op_histogram):
        chosen["compile-channels-last"] = {**baseline_config(), "mode": "compile", "channels_last": True}
    return chosen


def time_alone(kind: str, path: Path, seconds: float) -> dict:
    """In this fresh process: build one runtime, then time it with a plain loop. Milliseconds per call."""
    from advisor.config import default_cache_dir
    from advisor.feeds import make_feeds
    from advisor.model import analyze
    from hwprofiles.targets import detect_targets

    info = analyze(spec_of(path))
    feeds = make_feeds(info, 1)
    started = time.perf_counter()
    if kind == "ort":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def call():
            return session.run(None, feeds)
    else:
        from tuners.base import Candidate, TuneContext
        from tuners.pytorch import PyTorchTuner

        ctx = TuneContext(info=info, target=detect_targets()[0], workdir=Path("/tmp"), cache_dir=default_cache_dir(),
                          budget_s=0, tolerance=0.05, source=source_of(path))
        model = PyTorchTuner().build(Candidate("pytorch", "cpu", json.loads(kind)), ctx)
        model.bind(feeds)
        call = model.execute
    build_s = time.perf_counter() - started
    warm_until = time.perf_counter() + 1.0
    while time.perf_counter() < warm_until:
        call()
    samples, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 20:
        begun = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - begun) / 1e6)
    return {"p50_ms": float(np.percentile(samples, 50)), "p99_ms": float(np.percentile(samples, 99)),
            "calls": len(samples), "build_s": round(build_s, 3)}


def timed_child(kind: str, path: Path, seconds: float) -> dict | str:
    wait_for_quiet_machine()
    done = subprocess.run([sys.executable, __file__, "--time", kind, str(path), str(seconds)], capture_output=True,
                          text=True, cwd=REPO, timeout=900)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return (lines[-1] if lines else f"exit {done.returncode}")[:300]
    return json.loads(done.stdout.splitlines()[-1])


def compare(name: str, path: Path, rounds: int, seconds: float) -> dict:
    configs = candidates(path)
    per_round: list[dict] = []
    for index in range(rounds):
        order = ["ort", *configs] if index % 2 == 0 else [*configs, "ort"]  # alternate who goes first
        measured = {label: timed_child("ort" if label == "ort" else json.dumps(configs[label]), path, seconds)
                    for label in order}
        per_round.append(measured)
    ratios = {}
    for label in configs:
        values = [r[label]["p50_ms"] / r["ort"]["p50_ms"] for r in per_round
                  if isinstance(r[label], dict) and isinstance(r["ort"], dict)]
        ratios[label] = {"median": statistics.median(values), "min": min(values), "max": max(values)} if values \
            else {"error": next(r[label] for r in per_round if not isinstance(r[label], dict))}
    return {"model": name, "path": str(path), "source": source_of(path) or "ONNX (onnx2torch)", "configs": configs,
            "rounds": per_round, "p50_ratio_to_ort": ratios}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--time":
        print(json.dumps(time_alone(sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from hwprofiles.targets import detect_cpu

    cpu = detect_cpu()
    results = []
    for name in args.models.split(","):
        path = (args.models_dir / EXTRA_MODELS[name]) if name in EXTRA_MODELS else model_path(name, args.models_dir)
        if not path.exists():
            subprocess.run([sys.executable, str(REPO / "scripts" / "make_models.py"), "--out", str(args.models_dir),
                            "--models", name], check=True, cwd=REPO)
        result = compare(name, path, args.rounds, args.seconds)
        results.append(result)
        for label, ratio in result["p50_ratio_to_ort"].items():
            text = (f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})" if "median" in ratio
                    else f"failed: {ratio['error']}")
            print(f"{name:10s} {label:22s} p50 / ONNX Runtime p50: {text}", flush=True)
    out = args.out or REPO / "bench" / "results" / f"pytorch-vs-ort-{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu.to_dict(), "python": platform.python_version(), "rounds": args.rounds,
                               "seconds_per_child": args.seconds, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
