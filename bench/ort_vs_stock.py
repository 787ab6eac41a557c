"""Is the advisor's best CPU candidate ever slower than a stock ONNX Runtime session? Measured side by side.

For each model: run `advisor recommend --backends onnxruntime`, take the best CPU trial's configuration, then
time it and a stock session (all graph optimisations, all cores: `InferenceSession(path)`) interleaved in
this one process, and print the ratio stock / advised (>= 1.0 means the advice is at least as fast).

    .venv/bin/python bench/ort_vs_stock.py MODEL.onnx [--input-shape NAME=dims ...] [--budget 60s]
    .venv/bin/python bench/ort_vs_stock.py --make-models     # builds a transformers CNN + encoder first
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from advisor.config import RecommendConfig
from advisor.feeds import make_feeds
from advisor.measure import HarnessSettings, LatencyStats, interleaved_samples
from advisor.model import ModelSpec
from advisor.pipeline import recommend
from advisor.slo import Slo
from advisor.tuning import best_trial
from advisor.trials import Trial
from advisor.units import parse_duration_s, parse_shape
from tuners.onnxruntime import providers_for, session_options

REPO = Path(__file__).resolve().parent.parent


def advised_config(model: Path, shapes: dict, budget_s: float, workdir: Path) -> dict:
    config = RecommendConfig(model=ModelSpec(model, shapes), slo=Slo(10_000.0), out_dir=workdir / model.stem,
                             budget_s=budget_s, backends=("onnxruntime",), make_artifact=False,
                             batch_sizes=(1,))
    result = recommend(config)
    trials = [Trial.from_dict(t) for t in result.report["trials"]]
    best = best_trial([t for t in trials if t.target == "cpu" and t.batch_size == 1], "p99")
    return dict(best.config)


def side_by_side(model: Path, shapes: dict, config: dict, seconds: float) -> tuple[LatencyStats, LatencyStats]:
    import onnxruntime as ort

    from advisor.model import analyze

    info = analyze(ModelSpec(model, shapes))
    feeds = make_feeds(info, 1)
    stock = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    if config.get("precision") == "int8-dynamic":
        from tuners.onnxruntime import quantized_model_path

        model = quantized_model_path(model, Path(tempfile.mkdtemp()))
    advised = ort.InferenceSession(str(model), session_options(config), providers=providers_for(config))
    settings = HarnessSettings(warmup=5, min_iterations=200, min_time_s=seconds, max_time_s=seconds * 3)
    samples = interleaved_samples({"stock": lambda: stock.run(None, feeds),
                                   "advised": lambda: advised.run(None, feeds)}, settings)
    return LatencyStats.from_samples(samples["stock"]), LatencyStats.from_samples(samples["advised"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--input-shape", action="append", default=[])
    parser.add_argument("--budget", default="60s")
    parser.add_argument("--seconds", type=float, default=5.0, help="side-by-side timing per model")
    parser.add_argument("--make-models", action="store_true", help="build resnet + bert with scripts/make_models.py")
    args = parser.parse_args()
    shapes = dict(parse_shape(s) for s in args.input_shape)
    work = Path(tempfile.mkdtemp(prefix="ort-vs-stock-"))
    models = list(args.models)
    if args.make_models:
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_models.py"), "--out", str(work / "models"),
                        "--models", "resnet,bert"], check=True)
        models += sorted((work / "models").glob("*.onnx"))
    print(f"{'model':<28} {'advised config':<60} {'stock p50':>10} {'advised p50':>12} {'ratio p50':>10} "
          f"{'ratio p99':>10}")
    for model in models:
        model_shapes = dict(shapes)
        if model.stem.startswith("bert") and not model_shapes:
            model_shapes = {"input_ids": (1, 128), "attention_mask": (1, 128), "token_type_ids": (1, 128)}
        config = advised_config(model, model_shapes, parse_duration_s(args.budget), work)
        stock, advised = side_by_side(model, model_shapes, config, args.seconds)
        described = " ".join(f"{k}={v}" for k, v in config.items() if k not in ("provider", "stock"))
        print(f"{model.name:<28} {described[:60]:<60} {stock.p50:>9.3f}  {advised.p50:>11.3f}  "
              f"{stock.p50 / advised.p50:>9.2f}x {stock.p99 / advised.p99:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
