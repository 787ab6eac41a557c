"""How well does the cost model predict measurements it did not see? Measured on this machine.

Five-plus varied models (CNNs of three sizes, an MLP, a transformer encoder, MobileNetV2 and ResNet-18 from
transformers when torch is installed) are measured with ONNX Runtime at 1 and 2 threads and batch sizes 1, 2, 4.
Then, with the same code the ranking uses (advisor.costmodel):

- threads: fit on one thread count, predict the other (anchored on the measurement at the same batch);
- batch:   fit on batch sizes 1 and 2, predict 4 (anchored on batch 2);
- model:   leave one model out, fit on the others, predict the held-out model from its FLOPs and bytes alone.

Prints a table and ends with exactly one line `costmodel MAPE: X%` (all held-out predictions together).

    .venv/bin/python bench/costmodel_accuracy.py [--seconds 0.5] [--no-torch]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import models  # noqa: E402  (the repo's test-model builders)
from advisor.costmodel import Observation, RooflineModel  # noqa: E402
from advisor.feeds import make_feeds  # noqa: E402
from advisor.measure import HarnessSettings, LatencyStats, time_calls  # noqa: E402
from advisor.model import ModelSpec, analyze  # noqa: E402
from advisor.ranking import target_hardware  # noqa: E402
from hwprofiles.catalog import load_catalog  # noqa: E402
from hwprofiles.targets import detect_targets  # noqa: E402
from tuners.onnxruntime import providers_for, session_options  # noqa: E402

THREADS = (1, 2)
BATCHES = (1, 2, 4)


@dataclass(frozen=True)
class Point:
    model: str
    threads: int
    batch: int
    flops: float
    nbytes: float
    p50_ms: float


def build_models(folder: Path, use_torch: bool) -> dict[str, tuple[Path, dict]]:
    built = {
        "cnn-small": (models.save(models.tiny_cnn(64, 16), folder / "cnn_small.onnx"), {}),
        "cnn-large": (models.save(models.tiny_cnn(128, 48, seed=1), folder / "cnn_large.onnx"), {}),
        "mlp": (models.save(models.tiny_mlp(512, 2048), folder / "mlp.onnx"), {}),
        "encoder": (models.save(models.tiny_encoder(2000, 256), folder / "encoder.onnx"),
                    {"input_ids": (1, 128), "attention_mask": (1, 128)}),
    }
    if use_torch:
        try:
            sys.path.insert(0, str(REPO / "scripts"))
            import make_models

            built["mobilenet_v2"] = (make_models.mobilenet(folder), {})
            built["resnet18"] = (make_models.resnet(folder), {})
        except ImportError as error:
            print(f"(torch/transformers not available, skipping their models: {error})")
    return built


def measure(built: dict, seconds: float) -> list[Point]:
    import onnxruntime as ort

    settings = HarnessSettings(warmup=3, min_iterations=10, min_time_s=seconds, max_time_s=seconds * 4)
    points = []
    for name, (path, shapes) in built.items():
        info = analyze(ModelSpec(path, shapes))
        for threads in THREADS:
            config = {"intra_op_threads": threads}  # everything else as in ONNX Runtime's stock session
            session = ort.InferenceSession(str(path), session_options(config), providers=providers_for(config))
            for batch in BATCHES:
                feeds = make_feeds(info, batch)
                stats = LatencyStats.from_samples(time_calls(lambda: session.run(None, feeds), settings))
                points.append(Point(name, threads, batch, info.flops * batch, info.bytes_moved * batch, stats.p50))
    return points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    target = detect_targets()[0]
    hardware, figures = target_hardware(target, load_catalog())
    print(f"machine: {target.label}; figures: {figures} (peak {hardware.peak_gflops:g} GFLOP/s, "
          f"{hardware.bandwidth_gbs:g} GB/s, {hardware.cores} threads)")
    with tempfile.TemporaryDirectory() as scratch:
        points = measure(build_models(Path(scratch), not args.no_torch), args.seconds)

    def observation(p: Point) -> Observation:
        return Observation(p.flops, p.nbytes, hardware.available_gflops(p.threads), hardware.bandwidth_gbs, p.p50_ms)

    def predict(model: RooflineModel, p: Point) -> float:
        return model.predict_ms(p.flops, p.nbytes, hardware.available_gflops(p.threads), hardware.bandwidth_gbs)

    errors: dict[str, list[float]] = {"threads": [], "batch": [], "model": []}
    rows = []
    names = sorted({p.model for p in points})
    for name in names:
        mine = [p for p in points if p.model == name]
        for held in THREADS:
            model = RooflineModel.fit([observation(p) for p in mine if p.threads != held])
            for p in (q for q in mine if q.threads == held):
                anchor = next(q for q in mine if q.batch == p.batch and q.threads != held)
                estimate = anchor.p50_ms * predict(model, p) / predict(model, anchor)
                errors["threads"].append(abs(estimate - p.p50_ms) / p.p50_ms)
                rows.append((name, f"threads {anchor.threads}->{held}", p.batch, p.p50_ms, estimate))
        for threads in THREADS:
            seen = [p for p in mine if p.threads == threads and p.batch < max(BATCHES)]
            model = RooflineModel.fit([observation(p) for p in seen])
            anchor = max(seen, key=lambda p: p.batch)
            p = next(q for q in mine if q.threads == threads and q.batch == max(BATCHES))
            estimate = anchor.p50_ms * predict(model, p) / predict(model, anchor)
            errors["batch"].append(abs(estimate - p.p50_ms) / p.p50_ms)
            rows.append((name, f"batch {anchor.batch}->{p.batch} @{threads}t", p.batch, p.p50_ms, estimate))
        model = RooflineModel.fit([observation(p) for p in points if p.model != name])
        for p in mine:
            estimate = predict(model, p)
            errors["model"].append(abs(estimate - p.p50_ms) / p.p50_ms)
        rows.append((name, "leave-one-model-out", "all", statistics.mean(p.p50_ms for p in mine),
                     statistics.mean(predict(model, p) for p in mine)))
    print(f"{'model':<14} {'held out':<24} {'batch':>5} {'measured ms':>12} {'predicted ms':>13} {'error':>7}")
    for name, held, batch, actual, estimate in rows:
        print(f"{name:<14} {held:<24} {batch!s:>5} {actual:>12.3f} {estimate:>13.3f} "
              f"{abs(estimate - actual) / actual * 100:>6.1f}%")
    for kind, values in errors.items():
        print(f"MAPE held-out {kind:<8}: {statistics.mean(values) * 100:5.1f}% over {len(values)} predictions")
    everything = [e for values in errors.values() for e in values]
    print(f"costmodel MAPE: {statistics.mean(everything) * 100:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
