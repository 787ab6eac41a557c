"""The export API the CLI calls: ExportOptions in, ExportResult out."""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from advisor.errors import UserError
from advisor.exporting import sources
from advisor.exporting.hf_export import TASKS

MIN_OPSET = 7
MAX_OPSET = 30
MAX_INPUT_ELEMENTS = 2**31  # as advisor.model: one example input beyond this is refused before allocation


@dataclass(frozen=True)
class ExportOptions:
    """How to export: the ONNX opset, float16 weights, the Hugging Face task, example input shapes and whether to
    store weights as external data (None: only for models over 2 GB)."""

    opset: int = 17
    fp16: bool = False
    task: str | None = None  # Hugging Face task; inferred from config.json's architectures when None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # from --input-shape
    external_data: bool | None = None  # None = automatic (models over 2 GB)

    def __post_init__(self):
        if not isinstance(self.opset, int) or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise UserError(f"invalid opset {self.opset!r}: expected an integer from {MIN_OPSET} to {MAX_OPSET}")
        if self.task is not None and self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}: expected one of {', '.join(TASKS)}")
        for name, shape in self.input_shapes.items():
            if not shape or any(not isinstance(d, int) or d <= 0 for d in shape):
                raise UserError(f"invalid input shape for {name!r}: {shape} (dimensions must be positive integers)")
            if math.prod(shape) > MAX_INPUT_ELEMENTS:
                raise UserError(f"input {name!r} would have {math.prod(shape):,} elements; refusing to allocate "
                                f"more than {MAX_INPUT_ELEMENTS:,}")

    def to_dict(self) -> dict:
        return {"opset": self.opset, "fp16": self.fp16, "task": self.task,
                "input_shapes": {name: list(shape) for name, shape in self.input_shapes.items()},
                "external_data": self.external_data}


@dataclass(frozen=True)
class ExportResult:
    """What was exported, how, and how closely the ONNX model (run in ONNX Runtime) matches the source."""

    onnx_path: Path
    source: str  # what was exported
    source_kind: str  # "onnx" | "huggingface" | "torchscript" | "torch.export" | "callable"
    exporter: str  # e.g. "torch.onnx.export(dynamo=True)", "optimum", "torch.onnx.export(dynamo=False)"
    max_abs_error: float | None  # exported ONNX (onnxruntime) vs source framework on the same inputs
    max_rel_error: float | None  # the max abs error over the largest absolute reference value
    notes: tuple[str, ...] = ()

    def error_text(self) -> str:
        """The numerical difference from the source in a few words ("not compared" when it was not)."""
        if self.max_abs_error is None:
            return "not compared"
        return f"max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}"

    def to_dict(self) -> dict:
        return {"onnx_path": str(self.onnx_path), "source": self.source, "source_kind": self.source_kind,
                "exporter": self.exporter, "max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict) -> ExportResult:
        return cls(onnx_path=Path(data["onnx_path"]), source=data["source"], source_kind=data["source_kind"],
                   exporter=data["exporter"], max_abs_error=data.get("max_abs_error"),
                   max_rel_error=data.get("max_rel_error"), notes=tuple(data.get("notes", ())))


def source_kind(source: str) -> str:
    """Classify SOURCE (see advisor.exporting.sources.source_kind); never imports torch."""
    return sources.source_kind(source)


def _validate_onnx(source: str, options: ExportOptions) -> ExportResult:
    """An ONNX source is validated where it lies (checker, external data, ONNX Runtime), not copied."""
    from advisor.exporting.finalize import session
    from advisor.model import load_model

    path = Path(source).expanduser()
    load_model(path)  # checker by path, external data kept inside the model's folder
    session(path)
    notes = []
    ignored = [name for name, value in (("--fp16", options.fp16), ("--task", options.task),
                                        ("--external-data", options.external_data)) if value]
    if ignored:
        notes.append(f"{', '.join(ignored)} not applied: the source is already an ONNX file, used as it is")
    return ExportResult(path, str(source), sources.ONNX, "none (already ONNX)", None, None, tuple(notes))


def _output_file(output: Path) -> Path:
    output = Path(output).expanduser()
    return output / "model.onnx" if output.is_dir() else output


def export_model(source: str, output: Path, options: ExportOptions | None = None) -> ExportResult:
    """Export SOURCE to the ONNX file `output` (a folder gets `model.onnx`), validate it and compare it with the
    source framework on the same inputs. No network: Hugging Face lookups are forced offline."""
    from advisor.exporting import deps
    from advisor.exporting.finalize import finalize

    options = options or ExportOptions()
    kind = sources.source_kind(source)
    if kind == sources.ONNX:
        return _validate_onnx(source, options)
    output = _output_file(output)
    if output.suffix.lower() != ".onnx":
        raise UserError(f"output {output} should be an .onnx file (or an existing folder)")
    output.parent.mkdir(parents=True, exist_ok=True)
    # staged next to the output so that multi-GB weights are moved within one file system, never copied across
    staging = Path(tempfile.mkdtemp(prefix=".advisor-export-", dir=output.parent))
    try:
        with deps.offline():
            if kind == sources.HUGGINGFACE:
                from advisor.exporting.hf_export import export_hf_folder

                staged = export_hf_folder(Path(source), staging, options)
            else:
                from advisor.exporting.torch_sources import export_torch_source

                staged = export_torch_source(source, kind, staging, options)
            max_abs, max_rel, notes = finalize(staged, output, options)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(output, str(source), kind, staged.exporter, max_abs, max_rel, staged.notes + tuple(notes))
