"""A real local Ray cluster on loopback: instance nodes advertise `advisor/instance:NAME` resources."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'advisor[cluster]')")

from advisor.config import RecommendConfig  # noqa: E402
from advisor.measure import HarnessSettings  # noqa: E402
from advisor.model import ModelSpec, analyze  # noqa: E402
from advisor.progress import Progress  # noqa: E402
from advisor.runfolder import RunFolder  # noqa: E402
from advisor.slo import Slo  # noqa: E402

HEAD_PORT = 6391
CLIENT_PORT = 10001  # outside Ray's default worker port range (10002-19999)
INSTANCE = "c6a.large"
pytestmark = pytest.mark.slow


def _ray_cli() -> str:
    return str(Path(sys.executable).parent / "ray")


def _ray_start(*args: str) -> None:
    subprocess.run([_ray_cli(), "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
                   check=True, capture_output=True, timeout=180)


@pytest.fixture(scope="module")
def cluster():
    """A head (no instance resource) and two nodes of the same instance type, all on 127.0.0.1."""
    subprocess.run([_ray_cli(), "stop", "--force"], capture_output=True, timeout=120)
    _ray_start("--head", f"--port={HEAD_PORT}", f"--ray-client-server-port={CLIENT_PORT}", "--num-cpus=1",
               "--include-dashboard=false")
    for _ in range(2):
        _ray_start(f"--address=127.0.0.1:{HEAD_PORT}", "--num-cpus=1",
                   f'--resources={{"advisor/instance:{INSTANCE}": 1}}')
    yield f"127.0.0.1:{HEAD_PORT}"
    if ray.is_initialized():
        ray.shutdown()
    subprocess.run([_ray_cli(), "stop", "--force"], capture_output=True, timeout=120)


def _config(model: Path, out: Path, address: str) -> RecommendConfig:
    return RecommendConfig(model=ModelSpec(model), slo=Slo(50.0), out_dir=out, budget_s=30, batch_sizes=(1, 2),
                           backends=("onnxruntime",), harness=HarnessSettings(min_time_s=0.2, max_time_s=2),
                           cluster=address, make_artifact=False)


def _kill_node(node_id: str) -> None:
    for proc in psutil.process_iter(["cmdline"]):
        if f"--node_id={node_id}" in " ".join(proc.info["cmdline"] or []) and "raylet" in proc.info["cmdline"][0]:
            os.kill(proc.pid, signal.SIGKILL)
            return
    raise AssertionError(f"no raylet for node {node_id}")


class FirstTrial(Progress):
    def __init__(self):
        self.seen = threading.Event()
        self.node_id = None

    def trial(self, trial, reused=False):
        self.node_id = self.node_id or trial.details.get("ray_node_id")
        self.seen.set()


def test_node_killed_mid_run_is_retried_on_the_other_node(cluster, mlp_path, tmp_path):
    from advisor.cluster import connect, instance_nodes, tune_on_cluster

    config = _config(mlp_path, tmp_path / "run", cluster)
    connect(cluster)
    assert len(instance_nodes()[INSTANCE]) == 2
    run = RunFolder.open(config.out_dir, False, {})
    progress = FirstTrial()
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(value=tune_on_cluster(
        run, analyze(config.model), config, progress)))
    worker.start()
    assert progress.seen.wait(120), "no trial arrived from the cluster"
    _kill_node(progress.node_id)
    worker.join(300)
    result = outcome["value"]
    ok = [t for t in result.trials if t.ok]
    assert ok and all(t.target == f"{INSTANCE}/cpu" for t in ok)
    assert not [t for t in result.trials if t.status == "failed" and t.backend == "cluster"]
    ids = [t.id for t in run.trials.all()]
    assert len(ids) == len(set(ids))
    assert {t.phase for t in ok} >= {"search", "confirm", "sweep"}
    assert len(instance_nodes()[INSTANCE]) == 1
    run.close()
