"""Profiling on a Ray cluster of real instances.

Each node advertises the catalogue instance it is with a custom resource (`advisor/instance:c7i.large: 1`).
For every instance type present, one task (holding that node exclusively) receives the model bytes, runs the
same tuners, harness and isolation as a local run, and streams each trial back as it finishes; the driver
appends it to the run folder's log, so `--resume` works across the cluster. A node that dies mid-run has its
remaining work retried on another node of the same instance type, or is recorded as a failed trial.
"""

from __future__ import annotations

import dataclasses
import queue
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from advisor.config import RecommendConfig, default_cache_dir
from advisor.errors import MissingDependency, UserError
from advisor.model import ModelInfo, ModelSpec, analyze, external_data_locations
from advisor.progress import Progress
from advisor.report import BackendStatus
from advisor.runfolder import RunFolder
from advisor.trials import Trial
from hwprofiles.targets import Target, detect_targets

RESOURCE_PREFIX = "advisor/instance:"


@dataclass(frozen=True)
class ClusterOutcome:
    trials: list[Trial]
    statuses: list[BackendStatus]
    targets: tuple[Target, ...]


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingDependency("ray", "cluster", "--cluster") from None
    return ray


def connect(address: str) -> None:
    ray = _ray()
    if ray.is_initialized():
        return
    try:
        if address.startswith("ray://"):
            ray.init(address=address, logging_level="ERROR")  # the client rejects driver-only options
        else:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except Exception as error:  # ConnectionError, TimeoutError, RuntimeError depending on the address form
        raise UserError(f"cannot connect to the Ray cluster at {address}: {str(error).splitlines()[0][:200]}") \
            from None


def instance_nodes() -> dict[str, list[str]]:
    """Alive nodes per catalogue instance name, from their `advisor/instance:NAME` resources."""
    ray = _ray()
    found: dict[str, list[str]] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for resource in node.get("Resources", {}):
            if resource.startswith(RESOURCE_PREFIX):
                found.setdefault(resource[len(RESOURCE_PREFIX):], []).append(node["NodeID"])
    return found


def _model_files(path: Path) -> dict[str, bytes]:
    """The model file and any external-data files beside it that it references (all inside its folder)."""
    import onnx

    files = {path.name: path.read_bytes()}
    model = onnx.load(str(path), load_external_data=False)
    for _, location in external_data_locations(model):
        if location not in files:
            files[location] = (path.parent / location).read_bytes()  # analyze() checked the paths
    return files


def _remote_tuning(instance: str, files: dict[str, bytes], model_name: str, config: RecommendConfig,
                   done: list[dict], out) -> int:
    """Runs on the cluster node: puts ("targets", [...]), ("trial", {...}) and ("status", {...}) items on `out`
    (a Ray queue living on the head node) as they happen. A queue rather than a streaming generator because
    Ray Client does not support streaming returns."""
    import ray

    from advisor.tuning import tune_targets

    node_id = ray.get_runtime_context().get_node_id()

    class Streaming(Progress):
        def trial(self, trial: Trial, reused: bool = False) -> None:
            if not reused:
                out.put(("trial", replace(trial, details={**trial.details, "ray_node_id": node_id}).to_dict()))

    with tempfile.TemporaryDirectory(prefix="advisor-node-") as scratch:
        folder = Path(scratch) / "model"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        node_config = replace(config, model=ModelSpec(folder / model_name, config.model.input_shapes),
                              out_dir=Path(scratch) / "run", resume=True, json_path=None, cluster=None,
                              cache_dir=default_cache_dir())  # the node's own cache, not the driver's path
        info = analyze(node_config.model)
        targets = tuple(replace(t, id=f"{instance}/{t.id}", instance=instance) for t in detect_targets())
        out.put(("targets", [t.to_dict() for t in targets]))
        run = RunFolder.open(node_config.out_dir, True, {})
        try:
            for trial in done:
                run.trials.append(Trial.from_dict(trial))
            outcome = tune_targets(run, info, node_config, targets, Streaming())
        finally:
            run.close()
        for status in outcome.statuses:
            out.put(("status", dataclasses.asdict(status)))
        return len(outcome.trials)


def _failed_trial(instance: str, reason: str) -> Trial:
    return Trial(id=f"cluster-{instance}-failed", backend="cluster", target=f"{instance}/cpu", config={},
                 batch_size=1, status="failed", reason=reason)


def tune_on_cluster(run: RunFolder, info: ModelInfo, config: RecommendConfig, progress: Progress,
                    max_attempts: int = 3) -> ClusterOutcome:
    """Profile on every instance type the cluster has, streaming trials into `run` as they arrive."""
    ray = _ray()
    connect(config.cluster)
    nodes = instance_nodes()
    if not nodes:
        raise UserError(f"the Ray cluster at {config.cluster} has no node with an '{RESOURCE_PREFIX}NAME' resource "
                        "(see docs/cluster.md)")
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(_remote_tuning)
    files = _model_files(info.path)
    results: queue.Queue = queue.Queue()
    head = next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n["Resources"]),
                None)
    # the item queues live on the head node, so losing a worker node loses no finished trial
    queue_options = {"num_cpus": 0}
    if head is not None:
        queue_options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(head, soft=True)

    def drive(instance: str) -> None:
        """Consume one instance's stream; on node loss, resubmit elsewhere with what already arrived."""
        for attempt in range(1, max_attempts + 1):
            done = [t.to_dict() for t in run.trials.all() if t.target.startswith(f"{instance}/")]
            items = Queue(actor_options=queue_options)
            # the whole instance resource: one profiling task per node, so measurements never share a machine
            task = remote.options(num_cpus=0, max_retries=0, resources={f"{RESOURCE_PREFIX}{instance}": 1}).remote(
                instance, files, info.path.name, config, done, items)
            try:
                while True:
                    finished, _ = ray.wait([task], timeout=0.2)
                    while True:
                        try:
                            results.put((instance, items.get_nowait()))
                        except Empty:
                            break
                    if finished:
                        ray.get(task)  # raises if the node or the task died
                        results.put((instance, ("finished", None)))
                        items.shutdown(force=True)
                        return
            except ray.exceptions.RayError as error:
                items.shutdown(force=True)
                reason = f"cluster node for {instance} failed (attempt {attempt}): {str(error).splitlines()[0][:200]}"
                results.put((instance, ("lost", reason)))
                if not instance_nodes().get(instance):
                    results.put((instance, ("failed", f"{reason}; no other node of instance {instance} is alive")))
                    return
        results.put((instance, ("failed", f"{instance}: gave up after {max_attempts} attempts")))

    def drive_safely(instance: str) -> None:
        try:
            drive(instance)
        except Exception as error:  # never leave the collector waiting for a thread that died
            results.put((instance, ("failed", f"{instance}: {type(error).__name__}: {error}"[:300])))

    threads = [threading.Thread(target=drive_safely, args=(name,), daemon=True) for name in sorted(nodes)]
    for thread in threads:
        thread.start()
    progress.stage(f"profiling on cluster instances: {', '.join(sorted(nodes))}")
    trials: list[Trial] = []
    statuses: list[BackendStatus] = []
    targets: dict[str, Target] = {}
    finished = 0
    while finished < len(threads):
        instance, (kind, payload) = results.get()
        if kind == "targets":
            targets.update({t["id"]: Target.from_dict(t) for t in payload})
        elif kind == "status":
            statuses.append(BackendStatus(**payload))
        elif kind == "trial":
            trial = Trial.from_dict(payload)
            if trial.id not in run.trials:  # a retried stream repeats nothing already logged
                run.trials.append(trial)
                progress.trial(trial)
        elif kind == "lost":
            progress.stage(payload)
        elif kind == "failed":
            trials.append(_failed_trial(instance, payload))
            finished += 1
        elif kind == "finished":
            finished += 1
    for thread in threads:
        thread.join()
    trials += [t for t in run.trials.all() if any(t.target == target_id for target_id in targets)]
    return ClusterOutcome(trials, statuses, tuple(targets.values()))
