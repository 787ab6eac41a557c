"""Static int8 quantisation for ONNX Runtime: QDQ models calibrated on the user's samples (or synthetic ones).

`onnxruntime.quantization.quant_pre_process` (shape inference and basic graph optimisation), then
`quantize_static` in QDQ format with int8 weights quantised per output channel and activations in ACTIVATION_TYPE,
whose ranges come from running the calibration samples through the model with one of three methods:
minmax (the observed range), entropy (the range minimising the KL divergence of the histogram) or percentile
(99.999 % of the observed values, clipping outliers).

"Excluding the N worst nodes" keeps in float the N quantised nodes that add the most error. A node's added error
is measured on the calibration samples (at most RANKING_SAMPLES of them) by running the float model and the QDQ
model side by side with every intermediate tensor exposed: for each tensor, the relative noise power
sum((qdq - float)^2) / sum(float^2) over the samples, the QDQ model's tensor taken as its consumers read it
(dequantised). The noise a tensor introduces is its relative noise power minus the largest of the tensors it is
computed from; a node scores the largest noise introduced at its output or at the tensors it reads, since a tensor
stays quantised while its producer or any consumer is (a noisy tensor ranks its producer and consumers together,
so excluding them removes it). The ranking is computed once per calibration and saved, so a
configuration always names the same model.

Every quantised model is cached in the tuner's work folder under a name holding the configuration and the digest
of the calibration samples, and written atomically (a resumed run, the measurement child and the export reuse it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from advisor.sample_data import SampleSet

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# U8S8 (activations uint8, weights int8) is what the VNNI/AMX-INT8 kernels of ONNX Runtime's CPU provider take
# directly; see docs/quantization.md for the measured comparison with S8S8 on this machine
ACTIVATION_TYPE = "uint8"
RANKING_SAMPLES = 8  # samples the error ranking runs through both models (every intermediate tensor is exposed)
PRECISION = "int8-static"


@dataclass(frozen=True)
class StaticQuantization:
    """One static int8 configuration: the calibration method and how many of the worst nodes stay in float."""

    calibration: str = "minmax"
    exclude_worst: int = 0
    activation_type: str = ACTIVATION_TYPE

    def __post_init__(self):
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"calibration {self.calibration!r}: one of {', '.join(CALIBRATION_METHODS)}")
        if self.exclude_worst < 0:
            raise ValueError("exclude_worst must be 0 or more")
        if self.activation_type not in ("uint8", "int8"):
            raise ValueError("activation_type: uint8 or int8")

    @classmethod
    def from_config(cls, config: Mapping) -> StaticQuantization:
        return cls(str(config.get("calibration", "minmax")), int(config.get("exclude_worst", 0)),
                   str(config.get("activation_type", ACTIVATION_TYPE)))

    def file_stem(self, digest: str) -> str:
        return f"qdq-{self.calibration}-{self.activation_type}-x{self.exclude_worst}-{digest}"


@dataclass(frozen=True)
class QuantizedModel:
    """A cached QDQ model and what it was made from (for the candidate's details)."""

    path: Path
    excluded_nodes: tuple[str, ...]
    calibration: dict  # SampleSet.to_dict()

    def details(self) -> dict:
        return {"calibration": self.calibration, "excluded_nodes": list(self.excluded_nodes)}


def _atomic_target(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f"{target.stem}.{os.getpid()}.partial{target.suffix}")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._next = 0

    def get_next(self):
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return dict(self._feeds[self._next - 1])

    def rewind(self):
        self._next = 0


def preprocessed_path(model_path: Path, workdir: Path) -> Path:
    """quant_pre_process's output, made once: shape inference where it succeeds (symbolic, then ONNX's only)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = workdir / f"{model_path.stem}.preprocessed.onnx"
    if target.exists():
        return target
    partial = _atomic_target(target).resolve()
    source = model_path.resolve()
    # where symbolic shape inference fails, onnxruntime saves the half-inferred model (and its weights) into the
    # current directory: run it from a scratch folder, not the user's
    scratch = Path(tempfile.mkdtemp(prefix="preprocess-", dir=workdir))
    previous = os.getcwd()
    os.chdir(scratch)
    try:
        try:
            quant_pre_process(str(source), str(partial))
        except Exception:  # symbolic shape inference does not know every operator: ONNX's shape inference alone
            quant_pre_process(str(source), str(partial), skip_symbolic_shape=True)
    finally:
        os.chdir(previous)
        shutil.rmtree(scratch, ignore_errors=True)
    partial.replace(target)
    return target


def quantize(model_path: Path, workdir: Path, spec: StaticQuantization, samples: SampleSet) -> QuantizedModel:
    """The QDQ model of one configuration, from the cache or made now (with its error ranking when it excludes)."""
    digest = samples.digest()[:12]
    target = workdir / f"{model_path.stem}.{spec.file_stem(digest)}.onnx"
    excluded: tuple[str, ...] = ()
    if spec.exclude_worst:
        ranking = error_ranking(model_path, workdir, StaticQuantization(spec.calibration, 0, spec.activation_type),
                                samples)
        excluded = tuple(name for name, _ in ranking[:spec.exclude_worst])
        _check_compute_left(preprocessed_path(model_path, workdir), [name for name, _ in ranking], excluded)
    if not target.exists():
        source = preprocessed_path(model_path, workdir)
        partial = _atomic_target(target)
        _quantize_static(source, partial, spec, samples, excluded)
        partial.replace(target)
    return QuantizedModel(target, excluded, samples.to_dict())


COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _check_compute_left(model_path: Path, quantised: Sequence[str], excluded: Sequence[str]) -> None:
    """An exclusion that leaves no convolution or matrix multiplication in int8 makes an fp32 model with a few
    exact int8 copies around it: labelled int8, it would claim accuracy int8 does not have. Refused."""
    import onnx

    op_types = {node.name: node.op_type for node in onnx.load(str(model_path), load_external_data=False).graph.node}
    if not any(op_types.get(name) in COMPUTE_OPS for name in quantised if name not in excluded):
        raise ValueError(f"excluding the {len(excluded)} worst nodes leaves no convolution or matrix multiplication "
                         f"in int8 (of {len(quantised)} quantised nodes)")


def _quantize_static(source: Path, dest: Path, spec: StaticQuantization, samples: SampleSet,
                     excluded: Sequence[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[spec.calibration]
    activation = QuantType.QUInt8 if spec.activation_type == "uint8" else QuantType.QInt8
    quantize_static(str(source), str(dest), _Reader(samples.samples), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=activation,
                    calibrate_method=method, nodes_to_exclude=list(excluded) or None)


def error_ranking(model_path: Path, workdir: Path, spec: StaticQuantization,
                  samples: SampleSet) -> list[tuple[str, float]]:
    """Quantised nodes of `spec`'s model (which excludes nothing), worst first, with the relative noise power
    each adds (see the module docstring); computed once per calibration and saved beside the model."""
    digest = samples.digest()[:12]
    saved = workdir / f"{model_path.stem}.{spec.file_stem(digest)}.ranking.json"
    if saved.exists():
        return [(name, float(error)) for name, error in json.loads(saved.read_text())]
    quantized = quantize(model_path, workdir, spec, samples)
    ranking = _rank_nodes(preprocessed_path(model_path, workdir), quantized.path, workdir,
                          samples.samples[:RANKING_SAMPLES])
    partial = _atomic_target(saved)
    partial.write_text(json.dumps(ranking))
    partial.replace(saved)
    return ranking


def _rank_nodes(float_path: Path, qdq_path: Path, workdir: Path,
                feeds: Sequence[Mapping[str, np.ndarray]]) -> list[tuple[str, float]]:
    """Walks the QDQ graph. A tensor keeps its QuantizeLinear/DequantizeLinear pair while its producer or any
    consumer is quantised, so a node is scored by the worst noise introduced at its output or at the tensors it
    reads (the producer and the consumers of a noisy tensor score alike, and excluding them together removes
    that quantisation). Tensors are compared as the next node reads them, after their QuantizeLinear/
    DequantizeLinear pair: the quantiser fuses some nodes (a Conv's output before the pair is its pre-Relu value,
    the pair's uint8 range doing the Relu), so only the dequantised value means the float model's tensor."""
    import onnx

    graph = onnx.load(str(qdq_path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    weights = {init.name for init in graph.initializer}
    dequantized = {}  # float tensor -> the DequantizeLinear output standing for it
    for node in graph.node:
        quantize_node = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if quantize_node is not None and quantize_node.op_type == "QuantizeLinear":
            dequantized.setdefault(quantize_node.input[0], node.output[0])
    source_of = {out: name for name, out in dequantized.items()}
    noise = _relative_noise(float_path, qdq_path, workdir, feeds, dequantized)
    introduced: dict[str, float] = {}  # tensor -> the noise it adds over the tensors it was computed from
    graph_inputs = {value.name for value in graph.input}
    for name in graph_inputs & dequantized.keys():
        introduced[name] = noise.get(name, 0.0)
    quantised = []
    for node in graph.node:
        if not node.name or node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.output:
            continue
        sources = [source_of[name] for name in node.input if name in source_of and source_of[name] not in weights]
        if not sources and not any(producer.get(name) is not None and producer[name].op_type == "DequantizeLinear"
                                   for name in node.input):
            continue  # not quantised
        quantised.append((node, sources))
        if node.output[0] in noise:
            introduced[node.output[0]] = noise[node.output[0]] - max((noise.get(s, 0.0) for s in sources),
                                                                     default=0.0)
    ranking = [(node.name, max(introduced.get(name, 0.0) for name in (node.output[0], *sources)))
               for node, sources in quantised]
    ranking.sort(key=lambda item: (-item[1], item[0]))
    return ranking


def _relative_noise(float_path: Path, qdq_path: Path, workdir: Path, feeds: Sequence[Mapping[str, np.ndarray]],
                    dequantized: Mapping[str, str]) -> dict[str, float]:
    """sum((qdq - float)^2) / sum(float^2) over the samples, for every float tensor of the float model the QDQ
    model also computes (its dequantised value where it quantises it)."""
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    suffix = "_ReshapedSavedOutput"  # what modify_model_output_intermediate_tensors appends to exposed tensors
    sessions, exposed = [], []
    for source in (float_path, qdq_path):
        augmented = _atomic_target(workdir / f"{source.stem}.exposed.onnx")
        modify_model_output_intermediate_tensors(str(source), str(augmented))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
        finally:
            augmented.unlink(missing_ok=True)
        sessions.append(session)
        exposed.append({out.name.removesuffix(suffix): out.name for out in session.get_outputs()})
    (float_session, qdq_session), (float_exposed, qdq_exposed) = sessions, exposed
    pairs = {name: qdq_exposed.get(dequantized.get(name, name)) for name in float_exposed}
    pairs = {name: qdq_name for name, qdq_name in pairs.items() if qdq_name is not None}
    float_outputs = [float_exposed[name] for name in pairs]
    qdq_outputs = sorted(set(pairs.values()))
    error = dict.fromkeys(pairs, 0.0)
    power = dict.fromkeys(pairs, 0.0)
    for sample in feeds:
        reference = dict(zip(pairs, float_session.run(float_outputs, dict(sample))))
        quantized = dict(zip(qdq_outputs, qdq_session.run(qdq_outputs, dict(sample))))
        for name, qdq_name in pairs.items():
            want = np.asarray(reference[name], dtype=np.float64)
            got = np.asarray(quantized[qdq_name], dtype=np.float64)
            if want.shape != got.shape:
                continue
            error[name] += float(np.sum((got - want) ** 2))
            power[name] += float(np.sum(want ** 2))
    return {name: error[name] / power[name] for name in pairs if power[name] > 0}
