"""OpenVINO on CPUs: the ONNX model read by OpenVINO's own frontend, reshaped to the measured batch's static shapes
and compiled by the CPU plugin with a performance hint (latency or throughput), a stream count, a thread count
and an inference precision (f32; bf16 only where the CPU computes bf16: AVX-512-BF16 or AMX).

Every precision is set explicitly: on AMX machines the plugin's own default is bf16, so an unset hint would label
a bf16 build "fp32". Each build reads back what the plugin compiled and fails when it differs from the name.
bf16 candidates carry `precision: bf16`, so the harness holds them to --tolerance (never tighter than the model's
fp32 tolerance) against the fp32 reference, like ONNX Runtime's int8: one outside it is rejected with the error.
The plugin's threads do not spin between calls (measured: no CPU used in the 200 ms after 200 calls), so a
compiled model leaves nothing running that would time another in a head-to-head.

int8 (tuners/openvino_quantize.py): the IR quantised by NNCF on the calibration samples, compiled with an f32
INFERENCE_PRECISION_HINT (the hint governs the operations left in float; the quantised ones run int8), and read
back: a build whose compiled model runs no convolution or matrix multiplication in int8 fails. Without nncf the
int8 stage is skipped and every build's details say so.

The artifact is OpenVINO IR (model.xml/.bin, weights kept f32) with the model's own shapes, plus the compile
properties in compile_config.json; the runner reshapes it to the manifest's shapes (other input shapes get their
own compilation) and needs only `openvino` and numpy.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuners.base import Availability, Candidate, CompiledModel, ExportedFiles, Search, StagedSearch, TuneContext, Tuner

if TYPE_CHECKING:
    from hwprofiles.targets import Target

DEVICE = "CPU"
# the config's precision name -> INFERENCE_PRECISION_HINT (int8: for the operations NNCF left in float)
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
HINTS = ("LATENCY", "THROUGHPUT")
IR_FILE = "model.xml"
CONFIG_FILE = "compile_config.json"


def baseline_config() -> dict[str, Any]:
    """OpenVINO's latency setting in f32: one stream, the plugin's own thread count (0)."""
    return {"device": DEVICE, "performance_hint": "LATENCY", "num_streams": 0, "inference_num_threads": 0,
            "precision": "fp32"}


def compile_properties(config: Mapping[str, Any]) -> dict[str, str]:
    """The CPU plugin's properties for a configuration; 0 streams or threads leave that choice to the hint."""
    properties = {"PERFORMANCE_HINT": str(config["performance_hint"]),
                  "INFERENCE_PRECISION_HINT": OV_PRECISIONS[config["precision"]]}
    if int(config.get("num_streams", 0)):
        properties["NUM_STREAMS"] = str(int(config["num_streams"]))
    if int(config.get("inference_num_threads", 0)):
        properties["INFERENCE_NUM_THREADS"] = str(int(config["inference_num_threads"]))
    return properties


class OpenVinoSearch(StagedSearch):
    """Latency hint in f32 first; then bf16 where the CPU computes it (the largest gain measured: 0.53-0.74x
    ONNX Runtime's latency on real models, so it comes first when the budget is short), then NNCF's int8 with both presets (where nncf is installed; int8 kernels are the other large gain on VNNI and
    AMX-INT8 machines), then the thread counts, the throughput hint and two streams, each stage varying the best
    configuration so far."""

    def __init__(self, target: Target):
        cores = max(1, target.threads or target.cpu.physical_cores)
        thread_counts = sorted({1, cores, *(n for n in (2, 4, 8, 16) if n < cores)})

        def hint(best):
            return [{**best, "performance_hint": name} for name in HINTS]

        def streams(best):
            return [{**best, "num_streams": 2}] if cores >= 2 else []

        def threads(best):
            return [{**best, "inference_num_threads": n} for n in thread_counts]

        def bf16(best):
            return [{**best, "precision": "bf16"}] if target.cpu.computes_bf16 else []

        def int8(best):
            from tuners.openvino_quantize import PRESETS, nncf_missing

            if nncf_missing():
                return []
            return [{**best, "precision": "int8", "quantization_preset": preset} for preset in PRESETS]

        super().__init__("openvino", target.id, baseline_config(), [bf16, int8, threads, hint, streams])


def read_static_model(core, path: Path, shapes: Mapping[str, tuple[int, ...]] | None):
    """The ONNX model through OpenVINO's frontend, reshaped to static shapes when given."""
    model = core.read_model(str(path))
    if shapes:
        model.reshape({name: list(shape) for name, shape in shapes.items()})
    return model


def compile_checked(core, model, config: Mapping[str, Any]):
    """Compile for the CPU and check the plugin really compiled the precision the configuration names (for int8:
    f32 for what is left in float, and int8 kernels for at least one convolution or matrix multiplication)."""
    import openvino as ov

    compiled = core.compile_model(model, DEVICE, compile_properties(config))
    got = compiled.get_property("INFERENCE_PRECISION_HINT")
    want = getattr(ov.Type, OV_PRECISIONS[config["precision"]])
    if got != want:
        capabilities = ", ".join(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
        raise RuntimeError(f"OpenVINO compiled {got.get_type_name()} where {want.get_type_name()} was asked for "
                           f"(its CPU capabilities: {capabilities})")
    if config["precision"] == "int8":
        from tuners.openvino_quantize import int8_layers

        if not int8_layers(compiled):
            capabilities = ", ".join(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
            raise RuntimeError(f"OpenVINO compiled no convolution or matrix multiplication in int8 from the quantised "
                               f"IR (its CPU capabilities: {capabilities})")
    return compiled


def _facts(compiled) -> dict[str, Any]:
    """What the plugin chose, read back from the compiled model."""
    return {"inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()),
            "num_streams": int(compiled.get_property("NUM_STREAMS")),
            "inference_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT"))}


class OpenVinoCompiledModel(CompiledModel):
    """One compiled model and one synchronous infer request; inputs are bound once as shared tensors."""

    def __init__(self, compiled, input_names: list[str], output_names: list[str], details: dict[str, Any]):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.input_names = input_names
        self.output_ports = [compiled.output(name) for name in output_names]
        self.details = details
        self._inputs: list[np.ndarray] = []  # the bound arrays, kept alive: the tensors share their memory

    def bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        import openvino as ov

        self._inputs = [np.ascontiguousarray(feeds[name]) for name in self.input_names]
        for name, array in zip(self.input_names, self._inputs):
            self.request.set_tensor(name, ov.Tensor(array, shared_memory=True))

    def execute(self) -> None:
        self.request.infer()

    def outputs(self) -> list[np.ndarray]:
        return [np.array(self.request.get_tensor(port).data) for port in self.output_ports]


class OpenVinoTuner(Tuner):
    name = "openvino"

    def probe(self, target: Target) -> Availability:
        if target.kind != "cpu":
            return Availability.no("the openvino backend drives CPUs only (OpenVINO's GPU plugin is for Intel "
                                   "GPUs, not CUDA devices)")
        try:
            import openvino as ov
        except ImportError:
            return self.not_installed()
        devices = ov.Core().available_devices
        if DEVICE not in devices:
            return Availability.no(f"OpenVINO {ov.get_version()} has no CPU plugin for this {target.cpu.arch} "
                                   f"machine (devices: {', '.join(devices) or 'none'})")
        return Availability.yes()

    def search(self, ctx: TuneContext) -> Search:
        return OpenVinoSearch(ctx.target)

    def _source(self, candidate: Candidate, ctx: TuneContext) -> tuple[Path, dict[str, Any]]:
        """The file OpenVINO reads for this candidate (the ONNX model, or its quantised IR), and its facts."""
        if candidate.config["precision"] != "int8":
            from tuners.openvino_quantize import nncf_missing

            missing = nncf_missing()
            return ctx.info.path, ({"int8": missing} if missing else {})
        from tuners.openvino_quantize import quantized_ir
        from advisor.sample_data import calibration_samples

        quantized = quantized_ir(ctx.info, ctx.workdir, str(candidate.config["quantization_preset"]),
                                 calibration_samples(ctx.calibration_path, ctx.info))
        return quantized.xml, quantized.details()

    def build(self, candidate: Candidate, ctx: TuneContext) -> CompiledModel:
        import openvino as ov

        started = time.perf_counter()
        core = ov.Core()
        source, made = self._source(candidate, ctx)
        model = read_static_model(core, source, ctx.info.shapes_at(ctx.batch_size))
        compiled = compile_checked(core, model, candidate.config)
        details = {"build_time_s": round(time.perf_counter() - started, 3), **_facts(compiled), **made}
        if candidate.config["precision"] == "int8":
            from tuners.openvino_quantize import int8_layers

            details["int8_layers"] = int8_layers(compiled)
        return OpenVinoCompiledModel(compiled, [spec.name for spec in ctx.info.inputs],
                                     [spec.name for spec in ctx.info.outputs], details)

    def export(self, candidate: Candidate, ctx: TuneContext, dest: Path) -> ExportedFiles:
        """OpenVINO IR of the model with its own shapes (weights f32, not compressed; for int8 the NNCF-quantised
        IR), and the compile config."""
        import openvino as ov

        dest.mkdir(parents=True, exist_ok=True)
        model = read_static_model(ov.Core(), self._source(candidate, ctx)[0], None)
        xml = dest / IR_FILE
        ov.save_model(model, str(xml), compress_to_fp16=False)
        settings = {"model": IR_FILE, "device": DEVICE, "properties": compile_properties(candidate.config),
                    "precision": candidate.config["precision"],
                    "input_shapes": {name: list(shape) for name, shape in ctx.info.shapes_at(ctx.batch_size).items()},
                    "inputs": [spec.name for spec in ctx.info.inputs],
                    "outputs": [spec.name for spec in ctx.info.outputs]}
        (dest / CONFIG_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        return ExportedFiles(files=(xml, xml.with_suffix(".bin"), dest / CONFIG_FILE), runtime={"openvino": settings},
                             requirements=(f"openvino=={self.versions().get('openvino', ov.__version__)}", "numpy"))

    def load_exported(self, folder: Path, runtime: dict):
        """feeds -> outputs with only openvino and numpy. Compiled for the manifest's shapes at load; inputs of
        other shapes are compiled for on first use. One call at a time (an infer request is not thread-safe)."""
        import openvino as ov

        settings = runtime["openvino"]
        core = ov.Core()
        source = core.read_model(str(Path(folder) / settings["model"]))
        precision = settings["precision"]
        names, outputs = list(settings["inputs"]), list(settings["outputs"])
        requests: dict[tuple, Any] = {}
        lock = threading.Lock()

        def request_for(shapes: dict[str, tuple[int, ...]]):
            key = tuple(sorted(shapes.items()))
            if key not in requests:
                model = source.clone()
                model.reshape({name: list(shape) for name, shape in shapes.items()})
                compiled = core.compile_model(model, settings.get("device", DEVICE), settings["properties"])
                got = compiled.get_property("INFERENCE_PRECISION_HINT")
                # bf16 on a CPU without it: right, but not as timed
                if got != getattr(ov.Type, OV_PRECISIONS[precision]):
                    warnings.warn(f"OpenVINO compiled {got.get_type_name()} on this CPU, not the artifact's "
                                  f"{precision}: its latency is not the one measured", stacklevel=2)
                if precision == "int8":
                    from tuners.openvino_quantize import int8_layers

                    if not int8_layers(compiled):  # a CPU without int8 kernels runs the quantised IR emulated
                        warnings.warn("OpenVINO runs no layer of the int8 IR in int8 on this CPU: its latency is "
                                      "not the one measured", stacklevel=2)
                requests[key] = (compiled.create_infer_request(), [compiled.output(name) for name in outputs])
            return requests[key]

        request_for({name: tuple(shape) for name, shape in settings["input_shapes"].items()})

        def predict(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            arrays = {name: np.ascontiguousarray(feeds[name]) for name in names}
            with lock:
                request, ports = request_for({name: array.shape for name, array in arrays.items()})
                for name, array in arrays.items():
                    request.set_tensor(name, ov.Tensor(array, shared_memory=True))
                request.infer()
                return [np.array(request.get_tensor(port).data) for port in ports]

        return predict
