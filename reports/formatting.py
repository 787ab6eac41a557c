"""Number, money, size and config formatting shared by the HTML report, its plots and the Markdown summary.

Every function accepts anything a report field may hold (a number, None, a missing value) and returns a string;
absent values render as an em dash so a partial report never breaks a rendering.
"""

from __future__ import annotations

import math
from datetime import datetime

DASH = "—"


def is_number(value) -> bool:
    """True for finite ints and floats (bools and NaN/inf are not figures a reader can use)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sig(value: float, digits: int = 3) -> str:
    """`digits` significant digits in positional notation (no exponent): 14.72 -> 14.7, 0.000162 -> 0.000162."""
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    text = f"{value:,.{decimals}f}"
    return text


def ms(value) -> str:
    """A latency in milliseconds, three significant digits: 14.7, 1238, 0.0751."""
    if not is_number(value):
        return DASH
    if abs(value) >= 1000 or float(value).is_integer():
        return f"{value:,.0f}"
    return sig(value)


def money(value, per: str = "") -> str:
    """USD with three significant digits ($0.236, $0.0765, $223) and thousands separators above $1,000."""
    if not is_number(value):
        return DASH
    text = f"${value:,.0f}" if abs(value) >= 1000 else f"${sig(value)}"
    return f"{text}{per}"


def si(value, unit: str = "") -> str:
    """Decimal SI prefixes: 1.43 GFLOP, 69.6 MB, 17.4 M."""
    if not is_number(value):
        return DASH
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


def number(value, digits: int = 3) -> str:
    """A plain figure: integers as they are, others to at most `digits` significant digits (0.7, 0.05, 23.5)."""
    if not is_number(value):
        return DASH
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) < 1e-4:
        return f"{value:.{digits}g}"
    text = sig(float(f"{value:.{digits}g}"), digits)
    return text.rstrip("0").rstrip(".") if "." in text else text


def percent(fraction, digits: int = 0) -> str:
    if not is_number(fraction):
        return DASH
    return f"{fraction * 100:.{digits}f}%"


def config_items(config, drop: frozenset[str] | set[str] = frozenset()) -> list[tuple[str, str]]:
    """A trial's config as (key, value) pairs for display, without the keys in `drop`."""
    if not isinstance(config, dict):
        return []
    return [(str(k), _value(v)) for k, v in config.items() if k not in drop]


def config_text(config, drop: frozenset[str] | set[str] = frozenset()) -> str:
    items = config_items(config, drop)
    return ", ".join(f"{k}={v}" for k, v in items) if items else DASH


def _value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number(value, 4)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def when(iso) -> str:
    """An ISO timestamp as `2026-11-22 09:14 UTC` (the raw text if it does not parse)."""
    if not isinstance(iso, str) or not iso:
        return DASH
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    zone = "UTC" if moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0 else \
        (moment.strftime("%z") if moment.tzinfo else "")
    return f"{moment:%Y-%m-%d %H:%M} {zone}".strip()


def duration(seconds) -> str:
    """`48 s`, `10 min 3 s`, `2 h 5 min`."""
    if not is_number(seconds) or seconds < 0:
        return DASH
    if seconds < 60:
        return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def elapsed(start, finish) -> float | None:
    """Seconds between two ISO timestamps, or None when either is missing or unparsable."""
    try:
        return (datetime.fromisoformat(finish) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None
