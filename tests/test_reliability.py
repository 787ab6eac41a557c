"""A backend that segfaults, aborts, hangs, runs out of memory or raises must not take the run down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advisor.runtime import ArtifactError, safe_extract


@pytest.mark.slow
def test_faulty_backend_is_isolated(mlp_path, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, ADVISOR_TUNERS="faulty=faulty_tuners:FaultyTuner", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-c", "from advisor.cli import main; main()", "recommend", str(mlp_path), "--slo", "50ms",
         "--backends", "onnxruntime,faulty", "--budget", "150s", "--min-time", "0.2s", "--batch-sizes", "1",
         "--trial-timeout", "12s", "--memory-limit", "1500", "--out", str(out), "--quiet", "--no-artifact"],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    faulty = {t["config"].get("fault"): t for t in report["trials"] if t["backend"] == "faulty"
              and t["phase"] == "search"}
    assert faulty["none"]["status"] == "ok"
    assert faulty["segfault"]["reason"] == "worker crashed with SIGSEGV"
    assert faulty["abort"]["reason"] == "worker crashed with SIGABRT"
    assert faulty["hang"]["reason"] == "worker timed out after 12 s"
    assert faulty["oom"]["reason"] == "worker exceeded the memory limit of 1500 MiB"
    assert faulty["raise"]["status"] == "failed"
    assert "operator 'Frobnicate'" in faulty["raise"]["reason"]
    assert any(t["backend"] == "onnxruntime" and t["status"] == "ok" for t in report["trials"])
    assert report["recommendation"] is not None
    html = (out / "report.html").read_text()
    assert "worker crashed with SIGSEGV" in html


def test_every_candidate_failing_is_its_own_verdict(mlp_path, tmp_path):
    """Not "nothing meets the SLO": exit 4, status no_valid_candidate, and a message that says why."""
    out = tmp_path / "run"
    env = dict(os.environ, ADVISOR_TUNERS="rejecting=faulty_tuners:RejectingTuner", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-c", "from advisor.cli import main; main()", "recommend", str(mlp_path), "--slo", "50ms",
         "--backends", "rejecting", "--budget", "30s", "--min-time", "0.2s", "--batch-sizes", "1", "--out", str(out),
         "--no-artifact"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 4, (done.stdout[-2000:], done.stderr[-2000:])
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "no_valid_candidate" and report["recommendation"] is None
    assert all(t["status"] == "failed" for t in report["trials"]) and report["trials"]
    assert "No candidate" in done.stdout and "No instance meets the SLO" not in done.stdout


BROKEN_TUNER = """
from tuners.base import Availability
from tuners.onnxruntime import OnnxRuntimeTuner


class BrokenTuner(OnnxRuntimeTuner):
    \"\"\"Its search runs in the advisor's own process (it is not a build): a bug there is the advisor's bug.\"\"\"

    name = "broken"

    def availability(self, target):
        return Availability.yes()

    def search(self, ctx):
        return 1 / 0
"""


def test_internal_error_is_exit_1_with_the_traceback_in_the_run_log(mlp_path, tmp_path):
    """Not a user error: exit 1, one line naming the error and the run folder's advisor.log, which holds it all."""
    (tmp_path / "broken_tuner.py").write_text(BROKEN_TUNER)
    out = tmp_path / "run"
    env = dict(os.environ, ADVISOR_TUNERS="broken=broken_tuner:BrokenTuner",
               PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    done = subprocess.run(
        [sys.executable, "-c", "from advisor.cli import main; main()", "recommend", str(mlp_path), "--slo", "50ms",
         "--backends", "broken", "--out", str(out), "--quiet", "--no-artifact"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    log = out / "advisor.log"
    assert done.stderr == (f"advisor: internal error: ZeroDivisionError: division by zero (full traceback in {log})\n")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "return 1 / 0" in text
    assert "ZeroDivisionError: division by zero" in text
    assert "Traceback" not in done.stdout


def _member(name: str, kind: bytes = b"0", linkname: str = "", data: bytes = b""):
    import tarfile

    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data)
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    return info, data


def _hostile_members():
    """(members, what the refusal says): each set starts with an innocent file, so a refusal that came after
    extracting part of the archive would show up in the destination."""
    import tarfile

    ok = _member("artifact/manifest.json", data=b"{}")
    return [
        ([ok, _member("../../escape.txt", data=b"hi")], "escapes"),
        ([ok, _member("artifact/../../escape.txt", data=b"hi")], "escapes"),
        ([ok, _member("/tmp/absolute.txt", data=b"hi")], "escapes"),
        ([ok, _member("artifact/link", tarfile.SYMTYPE, "/etc/passwd")], "link"),
        ([ok, _member("artifact/inside-link", tarfile.SYMTYPE, "manifest.json")], "link"),
        ([ok, _member("artifact/hard", tarfile.LNKTYPE, "/etc/passwd")], "link"),
        ([ok, _member("artifact/hard-inside", tarfile.LNKTYPE, "artifact/manifest.json")], "link"),
        ([ok, _member("artifact/null", tarfile.CHRTYPE)], "special file"),
        ([ok, _member("artifact/disk", tarfile.BLKTYPE)], "special file"),
        ([ok, _member("artifact/fifo", tarfile.FIFOTYPE)], "special file"),
    ]


def test_tar_traversal_is_refused(tmp_path):
    """Artifact tarballs with traversal, absolute, link or device members are refused before anything is
    extracted."""
    import io
    import tarfile

    for index, (members, message) in enumerate(_hostile_members()):
        path = tmp_path / f"evil{index}.tar.gz"
        with tarfile.open(path, "w:gz") as archive:
            for info, data in members:
                archive.addfile(info, io.BytesIO(data) if data else None)
        dest = tmp_path / f"dest{index}"
        with pytest.raises(ArtifactError, match=message):
            safe_extract(path, dest)
        assert not dest.exists() or not any(dest.iterdir()), f"{members[-1][0].name}: extracted before refusing"
    assert not (tmp_path.parent / "escape.txt").exists() and not Path("/tmp/absolute.txt").exists()


def test_absurd_flops_are_refused_before_anything_runs(tmp_path):
    """Inputs under the element limit, but ten 40,000-square matrix products: over 10^15 FLOPs per inference."""
    import onnx
    from onnx import TensorProto, helper

    from advisor.errors import UserError
    from advisor.model import ModelSpec, analyze

    square = [40000, 40000]
    nodes = [helper.make_node("MatMul", [f"v{i}", "w"], [f"v{i + 1}"]) for i in range(10)]
    graph = helper.make_graph(nodes, "flops", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, square),
                                               helper.make_tensor_value_info("w", TensorProto.FLOAT, square)],
                              [helper.make_tensor_value_info("v10", TensorProto.FLOAT, square)])
    path = tmp_path / "flops.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UserError, match=r"needs 1\.28e\+15 FLOPs per inference.*refusing to run it"):
        analyze(ModelSpec(path))


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


# ---- deeply nested graphs: If/Loop bodies inside If/Loop bodies, built on the wire (onnx.helper itself refuses
# to build past protobuf's nesting limit, which is the point: a hostile file is not built with onnx.helper) ----


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field; appending one to a serialised message adds it to the message."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _graph_attribute(name: str, graph: bytes) -> bytes:
    from onnx import AttributeProto

    attribute = AttributeProto(name=name, type=AttributeProto.GRAPH).SerializeToString()
    return _field(5, attribute + _field(6, graph))  # NodeProto.attribute = 5, AttributeProto.g = 6


def _if_level(level: int, inner: bytes | None) -> bytes:
    """A branch graph computing y{level}; above the innermost level it is one If whose then-branch is `inner`."""
    from onnx import TensorProto, helper

    out = f"y{level}"
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4])]
    if inner is None:
        return helper.make_graph([helper.make_node("Identity", ["x"], [out])], f"g{level}", [],
                                 outputs).SerializeToString()
    leaf = helper.make_graph([helper.make_node("Identity", ["x"], [f"{out}e"])], f"e{level}", [],
                             [helper.make_tensor_value_info(f"{out}e", TensorProto.FLOAT, [1, 4])])
    node = (helper.make_node("If", ["cond"], [out]).SerializeToString() + _graph_attribute("then_branch", inner)
            + _graph_attribute("else_branch", leaf.SerializeToString()))
    return helper.make_graph([], f"g{level}", [], outputs).SerializeToString() + _field(1, node)


def _loop_level(level: int, inner: bytes | None) -> bytes:
    """A Loop body (iteration, condition, v) -> (condition, v); above the innermost level v goes through a Loop
    whose body is `inner`."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(f"i{level}", TensorProto.INT64, []),
              helper.make_tensor_value_info(f"c{level}", TensorProto.BOOL, []),
              helper.make_tensor_value_info(f"v{level}", TensorProto.FLOAT, [1, 4])]
    outputs = [helper.make_tensor_value_info(f"co{level}", TensorProto.BOOL, []),
               helper.make_tensor_value_info(f"vo{level}", TensorProto.FLOAT, [1, 4])]
    nodes = [helper.make_node("Identity", [f"c{level}"], [f"co{level}"])]
    if inner is None:
        nodes.append(helper.make_node("Identity", [f"v{level}"], [f"vo{level}"]))
    graph = helper.make_graph(nodes, f"body{level}", inputs, outputs).SerializeToString()
    if inner is None:
        return graph
    loop = helper.make_node("Loop", ["trips", f"c{level}", f"v{level}"], [f"vo{level}"]).SerializeToString()
    return graph + _field(1, loop + _graph_attribute("body", inner))


def _nested_model(depth: int, op: str) -> bytes:
    """A model whose graph holds `depth` levels of `op` (If or Loop), each inside the body of the one above."""
    from onnx import TensorProto, helper

    inner = None
    for level in range(depth, 0, -1):
        inner = (_if_level if op == "If" else _loop_level)(level, inner)
    top = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])]
    if op == "If":
        graph = inner + helper.make_graph([], "nested", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                                         *top], []).SerializeToString()
    else:
        trips = helper.make_tensor("trips", TensorProto.INT64, [], [2])
        loop = helper.make_node("Loop", ["trips", "cond", "x"], ["y"]).SerializeToString()
        graph = helper.make_graph([], "nested", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), *top],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                                  [trips]).SerializeToString() + _field(1, loop + _graph_attribute("body", inner))
    model = helper.make_model(helper.make_graph([], "m", [], []), opset_imports=[helper.make_opsetid("", 17)])
    model.ClearField("graph")
    return model.SerializeToString() + _field(7, graph)  # ModelProto.graph = 7


def _analyze_in_time(path, limit_s: float = 60.0) -> subprocess.CompletedProcess:
    import time

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from advisor.cli import main; main()", "analyze", str(path)],
                          capture_output=True, text=True, timeout=limit_s * 2,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert time.monotonic() - started < limit_s, f"analysing {path.name} took more than {limit_s:.0f} s"
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return done


@pytest.mark.parametrize("op, depth", [("If", 30), ("Loop", 30)])
def test_nested_subgraphs_within_protobufs_limit_are_analysed(tmp_path, op, depth):
    path = tmp_path / f"{op}-{depth}.onnx"
    path.write_bytes(_nested_model(depth, op))
    done = _analyze_in_time(path)
    assert done.returncode == 0, done.stderr
    assert f"{op}" in done.stdout


@pytest.mark.parametrize("op, depth", [("If", 300), ("Loop", 300), ("If", 5000)])
def test_deeply_nested_subgraphs_are_refused_within_bounded_time(tmp_path, op, depth):
    """Hundreds of nested bodies are refused in one line, before any recursive analysis could overflow a stack."""
    path = tmp_path / f"{op}-{depth}.onnx"
    path.write_bytes(_nested_model(depth, op))
    done = _analyze_in_time(path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("advisor: error:") and done.stderr.count("\n") == 1, done.stderr
    assert "not a valid ONNX model" in done.stderr
