"""Accuracy on the user's own data (--eval-data): a reduced-precision candidate is accepted only when its metric
stays within --max-accuracy-drop of the fp32 reference's metric on the same samples.

The metric is `module:function(outputs, expected) -> float`, higher is better, where `outputs` is the list of the
model's outputs and `expected` the list of the samples' expected arrays, each with the samples stacked on axis 0.
Without --eval-metric the default is chosen from the expected data:

- one integer label per sample: top-1 accuracy, the share of samples whose highest-scoring class in the first
  output (its values for that sample, flattened) is the label;
- otherwise (expected outputs): the mean cosine similarity between each sample's output and its expected output,
  averaged over the outputs.

The reference value is the fp32 reference (ONNX Runtime, graph optimisations off, as for the numeric check) on the
same samples, computed once per run in an isolated worker. Without --eval-data, the output-difference tolerance of
advisor.executor stays the only check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from advisor.errors import UserError
from advisor.sample_data import SampleSet, load

DEFAULT_MAX_DROP = 0.01
TOP1 = "top-1 accuracy"
COSINE = "mean cosine similarity"

Metric = Callable[[list[np.ndarray], list[np.ndarray]], float]


def default_metric_name(expected_of_one_sample: Sequence[np.ndarray]) -> str:
    """TOP1 when each sample expects one integer (a class label), else COSINE."""
    if len(expected_of_one_sample) == 1 and expected_of_one_sample[0].dtype.kind in "iu" \
            and expected_of_one_sample[0].size == 1:
        return TOP1
    return COSINE


def top1_accuracy(outputs: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """Share of samples whose highest-scoring class (argmax of the first output's values for the sample) is the
    expected label."""
    scores = np.asarray(outputs[0]).reshape(len(outputs[0]), -1)
    labels = np.asarray(expected[0]).reshape(len(scores))
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def mean_cosine_similarity(outputs: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """Per sample, the cosine between the flattened output and its expected output; averaged over samples, then
    over the outputs. 1.0 is identical direction."""
    if len(outputs) < len(expected):
        raise ValueError(f"the model has {len(outputs)} outputs, the eval data expects {len(expected)}")
    values = []
    for out, want in zip(outputs, expected):
        out = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
        want = np.asarray(want, dtype=np.float64).reshape(len(want), -1)
        if out.shape != want.shape:
            raise ValueError(f"an output of shape {list(out.shape)} per sample set cannot be compared with expected "
                             f"{list(want.shape)}")
        norms = np.linalg.norm(out, axis=1) * np.linalg.norm(want, axis=1)
        cosine = np.where(norms > 0, np.sum(out * want, axis=1) / np.where(norms > 0, norms, 1.0),
                          np.all(out == want, axis=1).astype(np.float64))
        values.append(float(np.mean(cosine)))
    return float(np.mean(values))


BUILTIN_METRICS: dict[str, Metric] = {TOP1: top1_accuracy, COSINE: mean_cosine_similarity}


def resolve_metric(spec: str | None, eval_set: SampleSet) -> tuple[str, Metric]:
    """The metric's name and function: the user's module:function (one line when it cannot be imported), else the
    default for this eval data."""
    if spec is None:
        name = default_metric_name(eval_set.expected[0])
        return name, BUILTIN_METRICS[name]
    from advisor.exporting.sources import import_callable, split_callable

    if split_callable(spec) is None:
        raise UserError(f"--eval-metric must be module:function (or file.py:function), not {spec!r}")
    function = import_callable(spec)
    if not callable(function):
        raise UserError(f"--eval-metric {spec} is not callable")
    return spec, function


@dataclass(frozen=True)
class AccuracyGate:
    """What the isolated worker needs to judge a candidate on the user's data (picklable: names and paths)."""

    eval_path: Path  # the SampleSet (advisor.sample_data.save) in the run folder
    metric_spec: str | None  # --eval-metric, None: the default
    max_drop: float
    reference_value: float  # the fp32 reference's metric on the same samples
    metric_name: str

    def evaluate(self, run: Callable[[dict], list[np.ndarray]], batch_size: int) -> float:
        """The metric of a model (feeds -> outputs) on the eval data, fed `batch_size` samples at a time."""
        eval_set = load(self.eval_path)
        _, metric = resolve_metric(self.metric_spec, eval_set)
        outputs = collect_outputs(run, eval_set, batch_size)
        try:
            return metric_value(metric, outputs, eval_set)
        except Exception as error:
            raise RuntimeError(f"the --eval-data metric {self.metric_name} failed on this candidate's outputs: "
                               f"{type(error).__name__}: {error}") from None

    def judge(self, value: float) -> dict:
        """The accuracy entry of a trial: value, reference, drop and whether it is within --max-accuracy-drop."""
        drop = self.reference_value - value
        return {"metric": self.metric_name, "value": value, "reference": self.reference_value, "drop": drop,
                "max_drop": self.max_drop, "passed": bool(drop <= self.max_drop), "eval_data": str(self.eval_path)}


def collect_outputs(run: Callable[[dict], list[np.ndarray]], eval_set: SampleSet, batch_size: int) -> list[np.ndarray]:
    """The model's outputs on every eval sample, stacked on axis 0 in sample order (padding rows dropped)."""
    per_output: list[list[np.ndarray]] = []
    for feeds, real in eval_set.batches(batch_size):
        outputs = [np.asarray(out) for out in run(feeds)]
        if not per_output:
            per_output = [[] for _ in outputs]
        for index, out in enumerate(outputs):
            per_output[index].append(out[:real])
    return [np.concatenate(parts) for parts in per_output]


def metric_value(metric: Metric, outputs: list[np.ndarray], eval_set: SampleSet) -> float:
    value = metric(outputs, eval_set.stacked_expected())
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"the accuracy metric returned {value}")
    return value


def prepare_gate(model_path: Path, eval_path: Path, metric_spec: str | None, max_drop: float, timeout_s: float,
                 log_path: Path | None) -> AccuracyGate:
    """The gate with the fp32 reference's value, computed once in an isolated worker. A metric that fails on the
    reference's outputs is the user's error: one line."""
    from advisor.isolation import run_isolated

    result = run_isolated(reference_value, (model_path, eval_path, metric_spec), timeout_s=timeout_s,
                          log_path=log_path)
    if not result.ok:
        raise UserError(f"--eval-data: evaluating the fp32 reference failed ({result.reason})")
    name, value = result.value
    return AccuracyGate(eval_path, metric_spec, max_drop, value, name)


def reference_value(model_path: Path, eval_path: Path, metric_spec: str | None) -> tuple[str, float]:
    """The fp32 reference's metric on the eval data (run in an isolated worker by prepare_gate)."""
    from advisor.executor import reference_session

    eval_set = load(eval_path)
    session = reference_session(model_path)
    outputs = collect_outputs(lambda feeds: session.run(None, feeds), eval_set, 1)
    name, metric = resolve_metric(metric_spec, eval_set)
    return name, metric_value(metric, outputs, eval_set)
