"""The `advisor` command line: a thin layer over the Python API (advisor.pipeline and friends)."""

from advisor.cli.main import cli, main

__all__ = ["cli", "main"]
