"""kill -9 the whole `advisor recommend` at random points; --resume must lose nothing and repeat nothing, report what
an uninterrupted run reports given the same measurements, and every file it leaves must have been written whole.

One interrupted-and-resumed run (a module fixture) feeds three tests. Every Python process of it, the workers
included, runs with an audit hook (a `sitecustomize` on PYTHONPATH) that logs each file opened for writing and
each rename under the run folder: that is how the atomic-write promise is checked on the real run, not on a mock.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# a budget the search never reaches on this model: what a run measures must depend on the measurements alone,
# not on how much wall time each (interrupted) attempt happened to get
ARGS = ["--backends", "onnxruntime", "--budget", "600s", "--min-time", "0.3s", "--batch-sizes", "1,2", "--quiet"]
INTERRUPTIONS = 4
# written by the run and appended to by design (torn last line skipped on reading), or not data at all
APPEND_ONLY = {"trials.jsonl", "advisor.log", "workers.log", ".lock"}
# the artifact is written whole into artifact.partial/ and that folder is renamed to artifact/
IN_PLACE_PREFIXES: tuple[str, ...] = ()
VOLATILE = {("environment", "started_at"), ("environment", "finished_at"), ("settings", "out_dir")}

WRITE_HOOK = '''
"""Test-only audit hook: logs every file opened for writing and every rename, as JSON lines (os.write: no events)."""
import json, os, sys

_LOG = os.environ.get("ADVISOR_TEST_WRITE_LOG")
if _LOG:
    _FD = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _WRITING = os.O_WRONLY | os.O_RDWR

    def _path(value):
        return os.path.realpath(os.fsdecode(value)) if isinstance(value, (str, bytes, os.PathLike)) else None

    def _hook(event, args):
        if event == "open" and isinstance(args[2], int) and args[2] & _WRITING and _path(args[0]):
            entry = {"event": "open", "path": _path(args[0])}
        elif event == "os.rename" and _path(args[0]) and _path(args[1]):
            entry = {"event": "rename", "src": _path(args[0]), "dst": _path(args[1])}
        else:
            return
        os.write(_FD, (json.dumps({**entry, "pid": os.getpid()}) + "\\n").encode())

    sys.addaudithook(_hook)
'''


def _env(hook_dir: Path | None = None, write_log: Path | None = None) -> dict[str, str]:
    paths = ([str(hook_dir)] if hook_dir else []) + sys.path
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    if write_log is not None:
        env["ADVISOR_TEST_WRITE_LOG"] = str(write_log)
    return env


def _start(model: Path, out: Path, resume: bool, env: dict[str, str], extra: tuple[str, ...] = ()) -> subprocess.Popen:
    command = [sys.executable, "-c", "from advisor.cli import main; main()", "recommend", str(model), "--slo",
               "50ms", "--out", str(out), *ARGS, *extra] + (["--resume"] if resume else [])
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


@pytest.fixture(scope="module")
def interrupted_run(mlp_path, tmp_path_factory):
    """Up to INTERRUPTIONS SIGKILLs of the whole process group at random times, then a --resume to the end."""
    root = tmp_path_factory.mktemp("resume")
    hook_dir = root / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(WRITE_HOOK)
    out, write_log = root / "run", root / "writes.jsonl"
    env = _env(hook_dir, write_log)
    rng = random.Random(1234)
    survived = 0
    for attempt in range(INTERRUPTIONS):
        process = _start(mlp_path, out, attempt > 0, env)
        time.sleep(rng.uniform(2.0, 6.0))
        if process.poll() is not None:
            break
        os.killpg(process.pid, signal.SIGKILL)  # the advisor and its worker, mid-whatever
        process.wait()
        survived += 1
    final = _start(mlp_path, out, survived > 0 or (out / "trials.jsonl").exists(), env)
    _, stderr = final.communicate(timeout=600)
    assert final.returncode == 0, stderr.decode()[-2000:]
    return {"out": out, "survived": survived, "write_log": write_log, "root": root}


@pytest.mark.slow
def test_kill_and_resume_repeatedly(interrupted_run):
    out = interrupted_run["out"]
    assert interrupted_run["survived"] >= 1, "the run finished before it could be interrupted"
    ids = _logged_ids(out)
    assert len(ids) == len(set(ids)), "a trial was measured twice"
    report = json.loads((out / "report.json").read_text())
    assert sorted(t["id"] for t in report["trials"]) == sorted(ids), "a logged trial is missing from the report"
    assert {t["phase"] for t in report["trials"]} >= {"search", "confirm", "sweep"}


def _comparable(report: dict) -> dict:
    """The report without what legitimately differs between two runs: clocks, the run folder, the artifact path."""
    report = json.loads(json.dumps(report))
    for section, key in VOLATILE:
        report[section].pop(key, None)
    if report.get("recommendation"):
        report["recommendation"].pop("artifact", None)
    return report


@pytest.mark.slow
def test_resumed_report_equals_an_uninterrupted_run_given_the_same_measurements(interrupted_run, mlp_path):
    """The uninterrupted run is a fresh folder holding only the final trial log: the deterministic search asks
    for every candidate again and finds each one measured. It must need nothing new (the interrupted run measured
    exactly what an uninterrupted one asks for) and report the same trials, ranking and recommendation."""
    out, root = interrupted_run["out"], interrupted_run["root"]
    fresh = root / "uninterrupted"
    fresh.mkdir()
    shutil.copyfile(out / "trials.jsonl", fresh / "trials.jsonl")
    lines = (fresh / "trials.jsonl").read_text().splitlines()
    replay = _start(mlp_path, fresh, True, _env(), ("--no-artifact",))
    _, stderr = replay.communicate(timeout=300)
    assert replay.returncode == 0, stderr.decode()[-2000:]
    assert (fresh / "trials.jsonl").read_text().splitlines() == lines, "the resumed run missed a trial"
    resumed = _comparable(json.loads((out / "report.json").read_text()))
    uninterrupted = _comparable(json.loads((fresh / "report.json").read_text()))
    assert uninterrupted["trials"] == resumed["trials"]
    assert uninterrupted["ranking"] == resumed["ranking"]
    assert uninterrupted["recommendation"] == resumed["recommendation"]
    assert uninterrupted == resumed


def _writes(write_log: Path, root: Path) -> tuple[set[str], set[str]]:
    """(paths opened for writing, rename destinations), relative to the run folder, from every process."""
    opened, renamed = set(), set()
    base = str(root.resolve()) + os.sep
    for line in write_log.read_text().splitlines():
        entry = json.loads(line)
        if entry["event"] == "open" and entry["path"].startswith(base):
            opened.add(entry["path"][len(base):])
        elif entry["event"] == "rename" and entry["dst"].startswith(base):
            renamed.add(entry["dst"][len(base):])
    return opened, renamed


@pytest.mark.slow
def test_every_run_folder_write_is_atomic(interrupted_run):
    """No file the run leaves (report, HTML, summary, run.json, reference data, quantised model, the artifact,
    tarball) was ever opened for writing under its own name: each was written elsewhere and renamed into place
    (the artifact's files inside the folder artifact.partial/, renamed whole)."""
    out = interrupted_run["out"]
    opened, renamed = _writes(interrupted_run["write_log"], out)
    assert "trials.jsonl" in opened, "the audit hook saw no write of the parent process"
    assert any(name.startswith("data/reference-b") for name in renamed), "the audit hook missed the workers"
    left = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    checked = {name for name in left if name not in APPEND_ONLY and not name.startswith(IN_PLACE_PREFIXES)}
    assert {"report.json", "report.html", "summary.md", "run.json", "artifact.tar.gz",
            "artifact/manifest.json"} <= checked
    in_place = sorted(checked & opened)
    assert not in_place, f"written in place, not write-then-rename: {in_place}"
    not_renamed = {name for name in checked if not any(name == d or name.startswith(d + "/") for d in renamed)}
    assert not not_renamed, f"not renamed into place (nor a folder holding it): {sorted(not_renamed)}"
    assert "artifact" in renamed, "the artifact folder is renamed into place whole"


def test_a_trial_log_without_run_json_is_not_reused_without_resume(cnn_path, tmp_path):
    """A folder holding trials but no run.json (copied by hand) is a run: without --resume it is refused, not
    silently continued."""
    from click.testing import CliRunner

    from advisor.cli import cli

    out = tmp_path / "copied"
    out.mkdir()
    (out / "trials.jsonl").write_text("")
    result = CliRunner().invoke(cli, ["recommend", str(cnn_path), "--slo", "50ms", "--out", str(out), *ARGS])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("advisor: error:") and "pass --resume" in result.output
    assert result.output.count("\n") == 1


def test_resuming_with_another_model_is_refused(cnn_path, tmp_path):
    """--resume of a folder started with other settings (here another fingerprint) would mix two runs' trials."""
    from click.testing import CliRunner

    from advisor.cli import cli

    out = tmp_path / "other"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"fingerprint": {"model_sha256": "not this model"}}))
    (out / "trials.jsonl").write_text("")
    result = CliRunner().invoke(cli, ["recommend", str(cnn_path), "--slo", "50ms", "--out", str(out), "--resume",
                                      *ARGS])
    assert result.exit_code == 2, result.output
    assert result.output == f"advisor: error: cannot resume {out}: it was started with a different model or " \
                            "settings\n"
