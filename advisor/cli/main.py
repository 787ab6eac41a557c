"""Entry point: the command group, and the one place errors become exit codes and one-line messages.

Exit codes: 0 success (a recommendation was made), 3 nothing meets the SLO, 2 bad input or usage,
1 internal error (the traceback goes to a log file whose path is printed), 130 interrupted.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click
import platformdirs

import advisor
from advisor.errors import UserError

EXIT_INTERNAL = 1
EXIT_USAGE = 2


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _crash_log(error: BaseException) -> Path:
    """Where the traceback of an internal error goes: the current run folder's log, else the user log dir."""
    path = getattr(error, "advisor_log_path", None)
    if path is not None:
        return Path(path)  # the run already logged the traceback there
    else:
        folder = Path(platformdirs.user_log_dir("advisor"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "advisor-crash.log"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(traceback.format_exception(error)))
    return Path(path)


class AdvisorGroup(click.Group):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as error:
            click.echo(f"advisor: error: {_one_line(error.format_message())}", err=True)
            sys.exit(error.exit_code)
        except UserError as error:
            click.echo(f"advisor: error: {_one_line(str(error))}", err=True)
            sys.exit(error.exit_code)
        except (click.Abort, KeyboardInterrupt):
            words = sys.argv[1:] if args is None else list(args)
            resumable = bool(words) and words[0] == "recommend"  # other commands have no run folder to resume
            click.echo("advisor: interrupted" + (" (the run folder keeps every finished trial; rerun with --resume)"
                                                 if resumable else ""), err=True)
            sys.exit(130)
        except Exception as error:
            path = _crash_log(error)
            click.echo(f"advisor: internal error: {_one_line(f'{type(error).__name__}: {error}')[:300]} "
                       f"(full traceback in {path})", err=True)
            sys.exit(EXIT_INTERNAL)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=AdvisorGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(advisor.__version__, prog_name="advisor")
def cli():
    """Which hardware, runtime and settings serve this model cheapest within its latency SLO."""


def _register() -> None:
    from advisor.cli import analyze_cmd, cache_cmd, recommend_cmd, verify_cmd

    cli.add_command(recommend_cmd.recommend)
    cli.add_command(analyze_cmd.analyze)
    cli.add_command(verify_cmd.verify)
    cli.add_command(cache_cmd.cache)
    from advisor.cli.package_cmd import package_command

    cli.add_command(package_command)
    from advisor.cli.export_cmd import export

    cli.add_command(export)
    from advisor.cli.bench_serve_cmd import bench_serve

    cli.add_command(bench_serve)


_register()


def main() -> None:
    cli.main(prog_name="advisor")
