"""Parameter types and option bundles shared by the commands."""

from __future__ import annotations

import click

from advisor.errors import UserError
from advisor.units import parse_duration_s, parse_latency_ms, parse_shape


class _ParsedType(click.ParamType):
    """A click type backed by one of advisor.units' parsers (one error message style everywhere)."""

    parser = staticmethod(lambda text: text)

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self.parser(value)
        except UserError as error:
            self.fail(str(error), param, ctx)


class LatencyType(_ParsedType):
    name = "latency"
    parser = staticmethod(parse_latency_ms)


class DurationType(_ParsedType):
    name = "duration"
    parser = staticmethod(parse_duration_s)


class ShapeType(_ParsedType):
    name = "NAME=d0,d1,..."
    parser = staticmethod(parse_shape)


class IntListType(click.ParamType):
    name = "n1,n2,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(int(part) for part in str(value).split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers", param, ctx)
        if not numbers or any(n <= 0 for n in numbers):
            self.fail(f"{value!r} must list positive integers", param, ctx)
        return numbers


def input_shape_option(func):
    return click.option("--input-shape", "input_shapes", type=ShapeType(), multiple=True,
                        help="Concrete shape for an input with dynamic axes, e.g. input_ids=1,128 (repeatable).")(func)


def shapes_dict(pairs) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in pairs:
        if name in shapes and shapes[name] != shape:
            raise UserError(f"--input-shape given twice for {name!r} with different shapes")
        shapes[name] = shape
    return shapes
