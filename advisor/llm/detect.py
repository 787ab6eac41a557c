"""Whether `advisor recommend SOURCE` is a generative LLM to plan: kept apart from the planner so a fixed-shape
run never imports it."""

from __future__ import annotations

import json
from pathlib import Path


def is_generative_source(source: str) -> bool:
    """A folder (or a config.json) whose config describes a causal language model."""
    path = Path(source).expanduser()
    config = path / "config.json" if path.is_dir() else path
    if config.name != "config.json" or not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (ValueError, OSError):
        return False
    from advisor.llm.architecture import is_causal_lm

    return isinstance(data, dict) and is_causal_lm(data)
