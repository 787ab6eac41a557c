"""Deterministic input data for a model: the same feeds for every backend, so outputs can be compared."""

from __future__ import annotations

import numpy as np

from advisor.model import ModelInfo

DEFAULT_ID_RANGE = 100  # integer inputs with no embedding table in sight get ids in [0, 100)


def make_feeds(info: ModelInfo, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at one batch size: ids within the vocabulary, masks of ones, random floats."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec, (name, shape) in zip(info.inputs, info.shapes_at(batch_size).items()):
        lowered = name.lower()
        dtype = np.dtype(spec.dtype)
        if dtype == np.bool_:
            feeds[name] = np.ones(shape, dtype=np.bool_)
        elif np.issubdtype(dtype, np.integer):
            if "mask" in lowered:
                feeds[name] = np.ones(shape, dtype=dtype)
            elif "token_type" in lowered or "segment" in lowered:
                feeds[name] = np.zeros(shape, dtype=dtype)
            elif "position" in lowered and shape:
                feeds[name] = np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
            else:
                high = info.vocab_limits.get(name, DEFAULT_ID_RANGE)
                feeds[name] = rng.integers(0, max(high, 1), size=shape, dtype=dtype)
        else:
            feeds[name] = rng.standard_normal(size=shape).astype(dtype)
    return feeds
