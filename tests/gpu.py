"""The one place hardware gates live. Each gate marks a test `gpu` and skips it with the reason a user would see:

    from gpu import requires_tensorrt

    @requires_tensorrt
    def test_engine(...): ...

The reasons come from the backends' own availability checks, so a test is skipped exactly when the advisor would
report the backend unavailable, and says why in the same words (`pytest -rs` lists them).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import pytest

from hwprofiles.targets import Target, detect_targets


@lru_cache(maxsize=1)
def cuda_target() -> Target | None:
    """The first NVIDIA GPU this machine has, as the advisor sees it."""
    return next((target for target in detect_targets() if target.kind == "cuda"), None)


def gpu_reason() -> str | None:
    return None if cuda_target() is not None else "no NVIDIA GPU on this machine (nvidia-smi finds none)"


def tensorrt_reason() -> str | None:
    if (reason := gpu_reason()) is not None:
        return reason
    from tuners.tensorrt import TensorRtTuner

    return TensorRtTuner().availability(cuda_target()).reason


def ort_cuda_reason() -> str | None:
    if (reason := gpu_reason()) is not None:
        return reason
    from tuners.onnxruntime import OnnxRuntimeTuner

    return OnnxRuntimeTuner().availability(cuda_target()).reason


def cuda_torch_reason() -> str | None:
    """Why the pytorch backend cannot use the GPU (no GPU, torch missing, or a CPU build of torch), or None."""
    if (reason := gpu_reason()) is not None:
        return reason
    from tuners.pytorch import PyTorchTuner

    return PyTorchTuner().availability(cuda_target()).reason


def _gate(reason: Callable[[], str | None]):
    def decorate(test):
        why = reason()
        return pytest.mark.gpu(pytest.mark.skipif(why is not None, reason=why or "")(test))

    return decorate


requires_gpu = _gate(gpu_reason)
requires_tensorrt = _gate(tensorrt_reason)
requires_ort_cuda = _gate(ort_cuda_reason)
requires_cuda_torch = _gate(cuda_torch_reason)
