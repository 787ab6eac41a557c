"""Shared fixtures: small real ONNX models written once per session (hardware gates are in tests/gpu.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import models


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    models.save(models.tiny_cnn(), folder / "cnn.onnx")
    models.save(models.tiny_mlp(), folder / "mlp.onnx")
    models.save(models.tiny_encoder(), folder / "encoder.onnx")
    models.save(models.cancelling_cnn(), folder / "cancelling.onnx")
    return folder


@pytest.fixture(scope="session")
def cnn_path(model_dir) -> Path:
    return model_dir / "cnn.onnx"


@pytest.fixture(scope="session")
def mlp_path(model_dir) -> Path:
    return model_dir / "mlp.onnx"


@pytest.fixture(scope="session")
def cancelling_path(model_dir) -> Path:
    return model_dir / "cancelling.onnx"


@pytest.fixture(scope="session")
def encoder_path(model_dir) -> Path:
    return model_dir / "encoder.onnx"


# ---- headless Chromium for the report tests: installed by the test setup where it can be, else a skip with why ----

CHROMIUM_DEFAULT = "/usr/bin/chromium"  # where Debian's package puts it
APT_UPDATE_TIMEOUT_S = 300
APT_INSTALL_TIMEOUT_S = 600


def _executable(path: str | None) -> str | None:
    return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def _find_chromium() -> str | None:
    """ADVISOR_TEST_CHROMIUM names the binary to use (also how the tests of this setup simulate a missing one)."""
    configured = os.environ.get("ADVISOR_TEST_CHROMIUM")
    if configured:
        return _executable(configured)
    return next(filter(None, map(_executable, (CHROMIUM_DEFAULT, shutil.which("chromium"),
                                               shutil.which("chromium-browser")))), None)


def _apt_command() -> tuple[list[str] | None, str]:
    """How to run apt-get with the rights it needs (root, or sudo without a password), or why it cannot run."""
    configured = os.environ.get("ADVISOR_TEST_APT_GET")  # the tests of this setup stand in a fake apt-get
    apt = _executable(configured) if configured else shutil.which("apt-get")
    if not apt:
        return None, "apt-get is not available"
    if os.geteuid() == 0:
        return [apt], ""
    sudo = shutil.which("sudo")
    if sudo and subprocess.run([sudo, "-n", "true"], capture_output=True, stdin=subprocess.DEVNULL).returncode == 0:
        return [sudo, "-n", apt], ""  # -n: fails at once rather than waiting for a password
    return None, "installing it needs root (or sudo without a password)"


def _apt(apt: list[str], args: list[str], timeout_s: float) -> str | None:
    """One apt-get command; None when it succeeded, else what went wrong, in one line."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = [*apt, "-o", "DPkg::Lock::Timeout=300", *args]  # wait for another session's apt-get to finish
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"apt-get {args[0]} took more than {timeout_s:.0f} s"
    except OSError as error:
        return f"apt-get {args[0]} could not run: {error}"
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return f"apt-get {args[0]} failed with exit status {done.returncode}: {last[:200]}"
    return None


def install_chromium() -> str | None:
    """`apt-get update` then `apt-get install chromium`, each with a time-out; None on success, else the reason.

    A failed update is not fatal by itself (the package lists may be recent enough); it is reported with the
    install's failure.
    """
    apt, reason = _apt_command()
    if apt is None:
        return reason
    updated = _apt(apt, ["update", "-q"], APT_UPDATE_TIMEOUT_S)
    installed = _apt(apt, ["install", "-y", "-q", "--no-install-recommends", "chromium"], APT_INSTALL_TIMEOUT_S)
    if installed is None:
        return None
    return f"{installed} (after: {updated})" if updated else installed


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium binary; installed with apt-get once per session when missing, else the tests skip
    with the reason (no root, no apt-get, no network to the Debian mirror, a time-out)."""
    found = _find_chromium()
    if found:
        return found
    reason = install_chromium()
    if reason is None:
        found = _find_chromium()
        if found:
            return found
        where = os.environ.get("ADVISOR_TEST_CHROMIUM") or CHROMIUM_DEFAULT
        reason = f"apt-get installed chromium but {where} is not an executable"
    pytest.skip(f"chromium is not installed and could not be installed: {reason}")
