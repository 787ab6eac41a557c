"""The CLI as the tests drive it: in-process through click's runner, and the one-line error contract."""

from __future__ import annotations

from click.testing import CliRunner

from advisor.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result) -> str:
    """A bad input's whole output: one line, `advisor: error: ...`."""
    assert result.output.startswith("advisor: error:"), result.output
    assert result.output.count("\n") == 1, result.output
    return result.output
