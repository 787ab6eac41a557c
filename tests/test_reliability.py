"""A backend that segfaults, aborts, hangs, runs out of memory or raises must not take the run down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from advisor.runtime import ArtifactError, safe_extract


@pytest.mark.slow
def test_faulty_backend_is_isolated(mlp_path, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, ADVISOR_TUNERS="faulty=faulty_tuners:FaultyTuner", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-c", "from advisor.cli import main; main()", "recommend", str(mlp_path), "--slo", "50ms",
         "--backends", "onnxruntime,faulty", "--budget", "90s", "--min-time", "0.2s", "--batch-sizes", "1",
         "--trial-timeout", "20s", "--memory-limit", "1500", "--out", str(out), "--quiet", "--no-artifact"],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    faulty = {t["config"].get("fault"): t for t in report["trials"] if t["backend"] == "faulty"
              and t["phase"] == "search"}
    assert faulty["none"]["status"] == "ok"
    assert faulty["segfault"]["reason"] == "worker crashed with SIGSEGV"
    assert faulty["abort"]["reason"] == "worker crashed with SIGABRT"
    assert faulty["hang"]["reason"] == "worker timed out after 20 s"
    assert faulty["oom"]["reason"] == "worker exceeded the memory limit of 1500 MiB"
    assert faulty["raise"]["status"] == "failed"
    assert "operator 'Frobnicate'" in faulty["raise"]["reason"]
    assert any(t["backend"] == "onnxruntime" and t["status"] == "ok" for t in report["trials"])
    assert report["recommendation"] is not None
    html = (out / "report.html").read_text()
    assert "worker crashed with SIGSEGV" in html


def _tar(tmp_path, add):
    import tarfile

    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        add(archive)
    return path


def test_tar_traversal_is_refused(tmp_path):
    import io
    import tarfile

    def traversal(archive):
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))

    def symlink(archive):
        info = tarfile.TarInfo("artifact/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        archive.addfile(info)

    def absolute(archive):
        info = tarfile.TarInfo("/tmp/absolute.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))

    for maker, message in ((traversal, "escapes"), (symlink, "link"), (absolute, "escapes")):
        with pytest.raises(ArtifactError, match=message):
            safe_extract(_tar(tmp_path, maker), tmp_path / "dest")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_huge_graph_fails_within_bounded_time(tmp_path):
    """A deep chain of 20,000 nodes: analysed (or refused) within seconds, never hanging."""
    import time

    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"], name=f"n{i}") for i in range(20000)]
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("v20000", TensorProto.FLOAT, [1, 8])])
    path = tmp_path / "deep.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from advisor.cli import main; main()", "analyze", str(path)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert time.monotonic() - started < 60
    assert done.returncode in (0, 2) and "Traceback" not in done.stderr
