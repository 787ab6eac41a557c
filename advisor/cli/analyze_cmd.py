"""`advisor analyze MODEL`: inputs and dynamic axes, FLOPs, bytes, parameters, operator mix."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from advisor.cli.options import input_shape_option, shapes_dict
from advisor.model import ModelSpec, analyze as analyze_model


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
def analyze(model, input_shapes, as_json):
    """Validate MODEL and show its inputs (with dynamic axes), FLOPs, bytes moved, parameters and operator mix.

    Dynamic leading axes are taken as the batch axis at batch size 1; other dynamic axes need --input-shape.
    """
    info = analyze_model(ModelSpec(model, shapes_dict(input_shapes)))
    summary = info.summary_dict()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return 0
    console = Console(highlight=False)
    console.print(f"[bold]{model}[/bold]  opset {info.opset}  sha256 {info.sha256[:16]}...")
    table = Table(title="Signature")
    for column in ("", "name", "dtype", "shape", "measured as (batch 1)"):
        table.add_column(column)
    for spec in info.inputs:
        table.add_row("input", spec.name, spec.dtype, str(list(spec.shape)), str(list(info.input_shapes[spec.name])))
    for spec in info.outputs:
        table.add_row("output", spec.name, spec.dtype, str(list(spec.shape)), "")
    console.print(table)
    console.print(f"FLOPs per inference: {_si(info.flops, 'FLOP')}   bytes moved: {_si(info.bytes_moved, 'B')}   "
                  f"parameters: {_si(info.params, '')}   weights: {_si(info.weight_bytes, 'B')}   "
                  f"batch axis: {'yes' if info.batch_axis else 'no (fixed batch)'}")
    mix = Table(title="Operator mix")
    for column in ("class", "FLOPs", "share", "bytes"):
        mix.add_column(column, justify="left" if column == "class" else "right")
    for op_class, flops in sorted(info.flops_by_class.items(), key=lambda kv: -kv[1]):
        share = flops / info.flops * 100 if info.flops else 0.0
        mix.add_row(op_class, _si(flops, "FLOP"), f"{share:.1f}%", _si(info.bytes_by_class.get(op_class, 0), "B"))
    console.print(mix)
    console.print("Operators: " + ", ".join(f"{op} x{count}" for op, count in info.op_histogram.items()))
    if info.uncounted_ops:
        console.print("Not counted (unknown op or shape): " +
                      ", ".join(f"{op} x{count}" for op, count in info.uncounted_ops.items()))
    return 0
