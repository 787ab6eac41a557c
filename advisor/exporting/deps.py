"""Lazy imports of the optional export stack, and the environment an export runs in (offline, quiet).

Nothing here imports torch at module level: `import advisor.exporting` must stay cheap and work without the
`export` extra, so the CLI can say what is missing instead of failing with an ImportError traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from types import ModuleType

# what each optional module is needed for, for the MissingDependency message (package name, purpose)
_PURPOSES = {
    "torch": ("torch", "exporting a PyTorch model"),
    "transformers": ("transformers", "exporting a Hugging Face model"),
    "onnxscript": ("onnxscript", "the torch.onnx dynamo exporter"),
}

OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# loggers that print progress bars, opset-conversion tracebacks and deprecation chatter during an export; the
# outcome (which exporter, which opset, the numerical error) is reported in ExportResult instead
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript",
                  "transformers", "optimum")


def require(module: str) -> ModuleType:
    """Import an optional module, or raise MissingDependency naming the `export` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package, purpose = _PURPOSES.get(module.split(".")[0], (module.split(".")[0], "exporting a model"))
        from advisor.errors import MissingDependency

        raise MissingDependency(package, "export", purpose) from None


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Forbid hub downloads for the duration of an export: the advisor never fetches weights."""
    saved = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    os.environ.update(OFFLINE_VARIABLES)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence the exporters' progress lines, warnings and log chatter; yields what they printed."""
    captured = io.StringIO()
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        # stderr too: transformers and optimum draw tqdm progress bars there while loading weights
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
