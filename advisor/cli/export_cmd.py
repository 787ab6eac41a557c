"""`advisor export SOURCE -o model.onnx`: a thin layer over advisor.exporting.export_model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from advisor.cli.options import input_shape_option, shapes_dict
from advisor.exporting import ExportOptions, ExportResult, export_model
from advisor.exporting.api import MAX_OPSET, MIN_OPSET
from advisor.exporting.hf_export import TASKS

# the framework the exported model is compared with, per source kind (for the printed summary)
_FRAMEWORKS = {"huggingface": "transformers", "torchscript": "torch", "torch.export": "torch", "callable": "torch"}


def export_options(func):
    """--opset, --fp16 and --task: the export settings `advisor export` and `advisor recommend` share. Their
    defaults are None so that recommend can tell whether they were given for an ONNX source (where they do
    nothing)."""
    func = click.option("--task", type=click.Choice(list(TASKS)), default=None,
                        help="Hugging Face task (default: inferred from config.json's architectures).")(func)
    func = click.option("--fp16", is_flag=True, default=None,
                        help="Convert weights to float16 after the export (for GPU targets).")(func)
    return click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=None,
                        help="ONNX opset of the exported model (default 17).")(func)


def build_options(opset: int | None, fp16: bool | None, task: str | None, input_shapes,
                  external_data: bool | None = None) -> ExportOptions:
    extra = {"opset": opset} if opset is not None else {}
    return ExportOptions(fp16=bool(fp16), task=task, input_shapes=shapes_dict(input_shapes),
                         external_data=external_data, **extra)


def _dims(value) -> str:
    dims = value.type.tensor_type.shape.dim
    return "[" + ", ".join(d.dim_param or str(d.dim_value) if (d.dim_param or d.dim_value) else "?" for d in dims) + "]"


def _signature(path: Path) -> list[str]:
    """`input NAME: dtype [dims]` lines of the written model, so the user sees which axes stay dynamic (what
    `advisor recommend` will need --input-shape for)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return [f"{role} {value.name}: {onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)} "
            f"{_dims(value)}"
            for role, values in (("input", graph.input), ("output", graph.output))
            for value in values if value.name not in initializers]


def _difference(result: ExportResult) -> str:
    if result.max_abs_error is None:
        return "numerical difference: not compared (the source is already ONNX)"
    framework = _FRAMEWORKS.get(result.source_kind, result.source_kind)
    return (f"numerical difference vs {framework} (ONNX Runtime, same inputs): max abs {result.max_abs_error:.3g}, "
            f"max rel {result.max_rel_error:.3g}")


def summary_lines(result: ExportResult, output: Path) -> list[str]:
    """What was exported, by which exporter, and how far ONNX Runtime's outputs are from the source's."""
    if result.source_kind == "onnx":
        head = [f"{result.source} is already an ONNX file: validated in place (checker, ONNX Runtime), "
                f"nothing written to {output}"]
    else:
        head = [f"exported {result.source} ({result.source_kind}) to {result.onnx_path}",
                f"exporter: {result.exporter}"]
    return head + [_difference(result)] + _signature(result.onnx_path) + [f"note: {n}" for n in result.notes]


@click.command("export")
@click.argument("source", metavar="SOURCE")
@click.option("--output", "-o", "output", type=click.Path(path_type=Path), required=True,
              help="The ONNX file to write (an existing folder gets model.onnx).")
@export_options
@input_shape_option
@click.option("--external-data/--no-external-data", "external_data", default=None,
              help="Store the weights in MODEL.onnx.data beside the model (default: only above 2 GB).")
@click.option("--json", "as_json", is_flag=True, help="Print the export result as JSON.")
def export(source, output, opset, fp16, task, input_shapes, external_data, as_json):
    """Export SOURCE to ONNX, validate the file and compare its outputs with the source framework's.

    SOURCE is an ONNX file (validated only), a local Hugging Face model folder (config.json + weights), a
    TorchScript file (.pt/.pth), a torch.export file (.pt2) or module:callable returning a torch.nn.Module
    (give --input-shape for each input unless it has example_inputs). Nothing is downloaded. Needs the export
    extra: pip install 'advisor[export]'.
    """
    options = build_options(opset, fp16, task, input_shapes, external_data)
    result = export_model(source, output, options)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return 0
    for line in summary_lines(result, output):
        click.echo(line)
    return 0
