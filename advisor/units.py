"""Parsing of the human-friendly quantities the CLI accepts: latencies (`400ms`, `0.4s`, `400`) and durations."""

from __future__ import annotations

import math
import re

from advisor.errors import UserError

_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Zµ]*)\s*$")
_LATENCY_UNITS_MS = {"": 1.0, "ms": 1.0, "s": 1000.0, "sec": 1000.0, "us": 0.001, "µs": 0.001}
_DURATION_UNITS_S = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _parse(text: str, units: dict[str, float], what: str, example: str) -> float:
    match = _QUANTITY.match(str(text))
    if not match or match.group(2).lower() not in units:
        raise UserError(f"invalid {what} {text!r}: expected a positive number with a unit, e.g. {example}")
    value = float(match.group(1)) * units[match.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"invalid {what} {text!r}: must be greater than zero")
    return value


def parse_latency_ms(text: str) -> float:
    """`400ms`, `0.4s`, `400` (milliseconds) -> 400.0."""
    return _parse(text, _LATENCY_UNITS_MS, "latency", "400ms, 0.4s or 400")


def parse_duration_s(text: str) -> float:
    """`90s`, `3m`, `1h`, `120` (seconds) -> seconds."""
    return _parse(text, _DURATION_UNITS_S, "duration", "90s, 3m or 1h")


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`input_ids=1,128` -> ("input_ids", (1, 128))."""
    name, sep, dims = str(text).rpartition("=")
    if not sep or not name or not dims:
        raise UserError(f"invalid --input-shape {text!r}: expected NAME=d0,d1,... e.g. input_ids=1,128")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise UserError(f"invalid --input-shape {text!r}: dimensions must be integers") from None
    if any(d <= 0 for d in shape):
        raise UserError(f"invalid --input-shape {text!r}: dimensions must be positive")
    return name, shape
