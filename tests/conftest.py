"""Shared fixtures: small real ONNX models written once per session (hardware gates are in tests/gpu.py)."""

from __future__ import annotations

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
