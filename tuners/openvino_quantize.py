"""Post-training int8 quantisation of OpenVINO models with NNCF, calibrated on the run's samples.

`nncf.quantize` inserts FakeQuantize operations whose ranges come from running the calibration samples (all of
them: subset_size is their number) through the model; the CPU plugin then executes the quantised operations
(convolutions, matrix multiplications) with int8 kernels and the rest in f32. Two presets: "performance"
(symmetric activations and weights, the fastest kernels) and "mixed" (asymmetric activations, symmetric weights:
better for activations that are not centred on zero, such as after GELU or in attention). Transformer-like models
(Softmax next to at least as many MatMuls as convolutions) are quantised with ModelType.TRANSFORMER, which keeps
the operations known to lose accuracy (LayerNorm-style arithmetic, the attention's softmax path) in float.

The quantised IR is cached in the tuner's work folder under a name holding the preset, the model type and the
digest of the calibration samples, written atomically, and reused by builds, the export and a resumed run.
nncf is optional: `nncf_missing()` says why the int8 stage is skipped where it is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from advisor.model import ModelInfo
    from advisor.sample_data import SampleSet

PRESETS = ("performance", "mixed")
PRECISION = "int8"


def nncf_missing() -> str | None:
    """Why the OpenVINO int8 stage cannot run here, or None when it can."""
    if importlib.util.find_spec("nncf") is None:
        return "int8 not searched: nncf is not installed (pip install 'advisor[openvino]')"
    return None


def transformer_like(info: ModelInfo) -> bool:
    """Softmax and at least as many MatMuls (Gemm included) as convolutions: NNCF's TRANSFORMER model type."""
    ops = info.op_histogram
    matmuls = ops.get("MatMul", 0) + ops.get("Gemm", 0)
    return ops.get("Softmax", 0) > 0 and matmuls >= max(1, ops.get("Conv", 0))


@dataclass(frozen=True)
class QuantizedIR:
    """A cached quantised IR and what it was made from (for the candidate's details)."""

    xml: Path
    preset: str
    model_type: str  # "transformer" or "default"
    calibration: dict  # SampleSet.to_dict()

    def details(self) -> dict:
        return {"calibration": self.calibration, "quantization_preset": self.preset, "model_type": self.model_type,
                "excluded_nodes": [] if self.model_type == "default" else
                ["(NNCF's transformer model type keeps its accuracy-sensitive operations in float)"]}


def quantized_ir(info: ModelInfo, workdir: Path, preset: str, samples: SampleSet) -> QuantizedIR:
    """The NNCF-quantised IR of the model for one preset, from the cache or made now."""

    if preset not in PRESETS:
        raise ValueError(f"quantization_preset {preset!r}: one of {', '.join(PRESETS)}")
    model_type = "transformer" if transformer_like(info) else "default"
    xml = workdir / f"{info.path.stem}.ov-int8-{preset}-{model_type}-{samples.digest()[:12]}.xml"
    if not xml.exists():
        _quantize(info, xml, preset, model_type, samples.samples)
    return QuantizedIR(xml, preset, model_type, samples.to_dict())


def _quantize(info: ModelInfo, xml: Path, preset: str, model_type: str, samples) -> None:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(info.path))  # the model's own (possibly symbolic) shapes: any batch later
    options = {"preset": {"performance": nncf.QuantizationPreset.PERFORMANCE,
                          "mixed": nncf.QuantizationPreset.MIXED}[preset],
               "subset_size": len(samples)}
    if model_type == "transformer":
        options["model_type"] = nncf.ModelType.TRANSFORMER
    names = [spec.name for spec in info.inputs]
    feeds = [{name: sample[name] for name in names} for sample in samples]
    quantized = nncf.quantize(model, nncf.Dataset(feeds), **options)
    xml.parent.mkdir(parents=True, exist_ok=True)
    partial = xml.with_name(f"{xml.stem}.{os.getpid()}.partial.xml")
    ov.save_model(quantized, str(partial), compress_to_fp16=False)
    # the .bin first: an .xml that exists always has its weights beside it
    partial.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    partial.replace(xml)


def int8_layers(compiled) -> dict[str, int]:
    """Operations the plugin runs in int8 (u8/i8 runtime precision) in a compiled model, by layer type: how a
    build proves it is int8 and not only named so."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info: Mapping = op.get_rt_info()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if precision in ("u8", "i8") and layer in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution",
                                                  "Deconvolution"):
            counts[layer] = counts.get(layer, 0) + 1
    return counts
