"""Fuzzing the inputs users control: model bytes and CLI arguments never give a traceback or a hang."""

from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor.cli import cli

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _invoke(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_rejected_cleanly(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "model.onnx"
    path.write_bytes(data)
    result = _invoke(["analyze", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith("advisor: error:") and result.output.count("\n") == 1


@FUZZ
@given(data=st.data())
def test_mutated_model_bytes(cnn_path, tmp_path_factory, data):
    original = bytearray(Path(cnn_path).read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(original) - 1))
        original[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        original = original[: data.draw(st.integers(0, len(original)))]
    path = tmp_path_factory.mktemp("fuzz") / "model.onnx"
    path.write_bytes(bytes(original))
    result = _invoke(["analyze", str(path)])
    assert result.exit_code in (0, 2)


@FUZZ
@given(slo=st.text(max_size=12), shape=st.text(max_size=20), budget=st.text(max_size=8))
def test_cli_arguments(cnn_path, slo, shape, budget):
    args = ["recommend", str(cnn_path), "--slo", slo, "--input-shape", "zz" + shape, "--budget", budget, "--out",
            "/nonexistent/should-not-be-created"]
    result = _invoke(args)
    assert result.exit_code == 2  # the shape always names an unknown input, if nothing else is wrong
    assert result.output.startswith("advisor: error:")


@pytest.mark.parametrize("slo", ["abc", "-5ms", "0", "0ms", "", "5 parsecs"])
def test_malformed_slo(cnn_path, slo):
    result = _invoke(["recommend", str(cnn_path), "--slo", slo])
    assert result.exit_code == 2
    assert result.output.startswith("advisor: error:") and result.output.count("\n") == 1
