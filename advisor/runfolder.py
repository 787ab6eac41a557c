"""The run folder: trial log, reference data, logs, report and artifact, with a lock and atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from advisor.errors import UserError
from advisor.trials import TrialLog


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write-then-rename, so a reader (or a resumed run) never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False, default=str) + "\n")


@dataclass
class RunFolder:
    path: Path
    trials: TrialLog
    _lock: FileLock
    fingerprint: dict | None = None
    # the folder's run had written its report: a --resume then replays its trials and measures nothing new, so
    # the same report comes back (an interrupted run instead goes on measuring where it stopped)
    finished: bool = False

    @property
    def log_path(self) -> Path:
        return self.path / "advisor.log"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def workers_log(self) -> Path:
        return self.path / "workers.log"

    def backend_dir(self, backend: str, target: str) -> Path:
        folder = self.path / "work" / f"{backend}-{target.replace(':', '')}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @classmethod
    def open(cls, path: Path, resume: bool, fingerprint: dict) -> RunFolder:
        """Open (or create) a run folder. Resuming requires the same model and settings that affect trials."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise UserError(f"another advisor run is using {path}; wait for it or choose another --out") from None
        meta_path = path / "run.json"
        # the trial log alone decides whether the folder holds a run: without --resume its trials would otherwise
        # be reused silently when run.json is missing (a copied or hand-made folder)
        if not resume and (path / "trials.jsonl").exists():
            lock.release()
            raise UserError(f"{path} already holds a run; pass --resume to continue it or choose another --out")
        finished = False
        if resume and meta_path.exists():
            try:
                previous = json.loads(meta_path.read_text())
            except ValueError:
                previous = None
            if previous is not None and previous.get("fingerprint") != fingerprint:
                lock.release()
                raise UserError(f"cannot resume {path}: it was started with a different model or settings")
            finished = bool(previous and previous.get("finished"))
        write_json_atomic(meta_path, {"fingerprint": fingerprint, "finished": finished})
        return cls(path=path, trials=TrialLog(path / "trials.jsonl"), _lock=lock, fingerprint=fingerprint,
                   finished=finished)

    def mark_finished(self) -> None:
        """The report is written: a later --resume replays this run instead of extending it."""
        write_json_atomic(self.path / "run.json", {"fingerprint": self.fingerprint, "finished": True})

    def close(self) -> None:
        if self._lock.is_locked:
            self._lock.release()
