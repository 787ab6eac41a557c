"""Progress of a run on stderr: a live rich display for people, silence for tests and pipes."""

from __future__ import annotations

import sys

from advisor.trials import Trial


class Progress:
    """Silent progress; the base for the rich display."""

    def stage(self, message: str) -> None:
        pass

    def trial(self, trial: Trial, reused: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def _describe(trial: Trial) -> str:
    config = " ".join(f"{k}={v}" for k, v in trial.config.items() if k not in ("stock", "provider"))
    return f"{trial.backend}@{trial.target} b{trial.batch_size} {trial.phase}: {config}"


class RichProgress(Progress):
    """A spinner with the current stage, and one line per finished trial, on stderr."""

    def __init__(self, percentile: str):
        from rich.console import Console
        from rich.markup import escape

        self._escape = escape

        self.percentile = percentile
        self.console = Console(file=sys.stderr, highlight=False)
        # a slow refresh: redrawing the spinner is CPU the timed worker would lose on a 2-core machine
        self._status = self.console.status("starting", refresh_per_second=2)
        self._status.start()

    def stage(self, message: str) -> None:
        self._status.update(self._escape(message))
        self.console.print(self._escape(message))

    def trial(self, trial: Trial, reused: bool = False) -> None:
        prefix = "[dim](from log)[/dim] " if reused else ""
        if trial.ok:
            value = trial.latency_at(self.percentile)
            self.console.print(f"{prefix}[green]ok[/green] {self._escape(_describe(trial))}: "
                             f"{self.percentile} {value:.3f} ms")
        else:
            self.console.print(f"{prefix}[yellow]{trial.status}[/yellow] {self._escape(_describe(trial))}: "
                             f"{self._escape(str(trial.reason))}")

    def close(self) -> None:
        self._status.stop()
