"""Shared fixtures: small real ONNX models written once per session, and hardware gates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import models


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    models.save(models.tiny_cnn(), folder / "cnn.onnx")
    models.save(models.tiny_mlp(), folder / "mlp.onnx")
    models.save(models.tiny_encoder(), folder / "encoder.onnx")
    return folder


@pytest.fixture(scope="session")
def cnn_path(model_dir) -> Path:
    return model_dir / "cnn.onnx"


@pytest.fixture(scope="session")
def mlp_path(model_dir) -> Path:
    return model_dir / "mlp.onnx"


@pytest.fixture(scope="session")
def encoder_path(model_dir) -> Path:
    return model_dir / "encoder.onnx"


def has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


requires_gpu = pytest.mark.skipif(not has_nvidia_gpu(), reason="no NVIDIA GPU on this machine")
