"""The export step of `advisor recommend SOURCE` for a SOURCE that is not an ONNX file.

The model is exported into a hidden staging folder beside the run folder, analysed there, and moved into the run
folder (RUN/model.onnx, plus RUN/model.onnx.data for external weights) only after RunFolder.open has locked the
folder and accepted its fingerprint: a refused run (a folder in use, a run without --resume, a resume with another
model) never overwrites the model an earlier run measured. RUN/export.json records the source, the options and the
ExportResult, so that `--resume` with the same source and options reuses the exported file instead of exporting
again (an export need not be byte-identical, and the fingerprint holds the exported file's sha256).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from advisor.exporting.api import ExportResult, export_model
from advisor.exporting.sources import split_callable
from advisor.runfolder import write_json_atomic

RECORD = "export.json"


@dataclass(frozen=True)
class RunExport:
    """An exported model for one run: where to analyse it now, and the result to record in the report."""

    result: ExportResult  # onnx_path: the model's final place in the run folder
    options: dict
    staged: Path | None = None  # the staged model.onnx to move into the run folder; None when reused from it

    @property
    def analysis_path(self) -> Path:
        return self.staged or self.result.onnx_path

    def report_dict(self) -> dict:
        """report.json's `model.export`: ExportResult.to_dict() and the options it was exported with."""
        return {**self.result.to_dict(), "options": self.options}

    def install(self, source_key: str) -> None:
        """Move the staged files into the run folder (the weights file first, so the model never names a missing
        one) and record the export for --resume."""
        target = self.result.onnx_path
        if self.staged is not None:
            data, staged_data = _data_file(target), _data_file(self.staged)
            if staged_data.exists():
                os.replace(staged_data, data)
            else:
                data.unlink(missing_ok=True)  # a stale data file of an earlier export
            os.replace(self.staged, target)
        write_json_atomic(target.parent / RECORD, {"source": source_key, "options": self.options,
                                                   "result": self.result.to_dict()})


def _data_file(model: Path) -> Path:
    return model.with_name(model.name + ".data")  # as advisor.exporting.finalize.save names it


def source_key(source: str) -> str:
    """SOURCE with paths made absolute, so `--resume` from another directory still recognises it."""
    parts = split_callable(source)
    if parts is not None:
        module, attribute = parts
        if module.endswith(".py"):
            return f"{Path(module).expanduser().resolve()}:{attribute}"
        return source
    return str(Path(source).expanduser().resolve())


def _reusable(source: str, options: dict, target: Path) -> RunExport | None:
    """The run folder's earlier export of the same source with the same options, if it is complete."""
    record = target.parent / RECORD
    if not target.is_file() or not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        if data.get("source") != source_key(source) or data.get("options") != options:
            return None
        result = ExportResult.from_dict(data["result"])
    except (ValueError, KeyError, TypeError):
        return None
    return RunExport(replace(result, onnx_path=target), options)


@contextlib.contextmanager
def prepare(spec, target: Path, resume: bool) -> Iterator[RunExport | None]:
    """Export `spec` (an advisor.config.ExportSpec, or None for an ONNX source) for a run whose model lives at
    `target`; the staging folder is removed on the way out, whatever happened."""
    if spec is None:
        yield None
        return
    options = json.loads(json.dumps(spec.options.to_dict()))  # as it reads back from export.json
    if resume:
        reused = _reusable(spec.source, options, target)
        if reused is not None:
            yield reused
            return
    # beside the run folder, not in it: the folder may hold another run until RunFolder.open says otherwise; on
    # the same file system, so that multi-GB weights are moved, not copied
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".advisor-export-", dir=target.parent.parent))
    try:
        result = export_model(spec.source, staging / target.name, spec.options)
        yield RunExport(replace(result, onnx_path=target), options, staging / target.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fill_named_axes(model: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """--input-shape for the inputs the user did not name, from the ones they did, axis name by axis name: the
    exporter names a text model's axes `batch` and `sequence` on every input, so `input_ids=1,128` is enough to
    measure `attention_mask` and `token_type_ids` at 1x128 as well. Inputs with an unknown axis are left as they
    are (analysis then says which shape is missing)."""
    inputs = onnx.load(str(model), load_external_data=False).graph.input
    dims = {value.name: [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in inputs}
    sizes: dict[str, int] = {}
    for name, shape in shapes.items():
        for dim, size in zip(dims.get(name, ()), shape):
            if isinstance(dim, str) and dim:
                sizes.setdefault(dim, size)
    filled = dict(shapes)
    for name, axes in dims.items():
        rest = axes[1:]  # the leading axis is the batch axis, filled per measured batch size
        if name in filled or all(isinstance(dim, int) and dim > 0 for dim in rest):
            continue
        if all((isinstance(dim, int) and dim > 0) or dim in sizes for dim in rest):
            leading = axes[0] if isinstance(axes[0], int) and axes[0] > 0 else sizes.get(axes[0], 1)
            filled[name] = (leading, *(dim if isinstance(dim, int) else sizes[dim] for dim in rest))
    return filled
