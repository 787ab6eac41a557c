"""kill -9 the whole `advisor recommend` at random points; --resume must lose nothing and repeat nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["--backends", "onnxruntime", "--budget", "60s", "--min-time", "0.3s", "--batch-sizes", "1,2", "--quiet",
        "--no-artifact"]
INTERRUPTIONS = 4


def _start(model: Path, out: Path, resume: bool) -> subprocess.Popen:
    command = [sys.executable, "-c", "from advisor.cli import main; main()", "recommend", str(model), "--slo",
               "50ms", "--out", str(out), *ARGS] + (["--resume"] if resume else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)


def _logged_ids(out: Path) -> list[str]:
    path = out / "trials.jsonl"
    if not path.exists():
        return []
    ids = []
    for line in path.read_text().splitlines():
        try:
            ids.append(json.loads(line)["id"])
        except ValueError:
            pass  # the torn line a kill can leave
    return ids


@pytest.mark.slow
def test_kill_and_resume_repeatedly(mlp_path, tmp_path):
    rng = random.Random(1234)
    out = tmp_path / "run"
    survived = 0
    for attempt in range(INTERRUPTIONS):
        process = _start(mlp_path, out, resume=attempt > 0)
        time.sleep(rng.uniform(2.0, 6.0))
        if process.poll() is not None:
            break
        os.killpg(process.pid, signal.SIGKILL)  # the advisor and its worker, mid-whatever
        process.wait()
        survived += 1
    final = _start(mlp_path, out, resume=survived > 0 or (out / "trials.jsonl").exists())
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr.decode()[-2000:]
    ids = _logged_ids(out)
    assert len(ids) == len(set(ids)), "a trial was measured twice"
    report = json.loads((out / "report.json").read_text())
    assert sorted(t["id"] for t in report["trials"]) == sorted(ids)
    assert {t["phase"] for t in report["trials"]} >= {"search", "confirm", "sweep"}
    assert survived >= 1, "the run finished before it could be interrupted"
