"""The one configuration object `advisor recommend` runs from; the CLI only builds it."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import platformdirs

from advisor.errors import UserError
from advisor.exporting import ExportOptions
from advisor.measure import HarnessSettings
from advisor.model import ModelSpec
from advisor.slo import Slo
from hwprofiles.targets import RpcDevice

DEFAULT_BUDGET_S = 120.0
DEFAULT_BATCH_SIZES = (1, 2, 4, 8)
DEFAULT_TOLERANCE = 0.05


def default_cache_dir() -> Path:
    """Tuning databases and timing caches live here, outside any run folder, so runs share them."""
    return Path(platformdirs.user_cache_dir("advisor"))


@dataclass(frozen=True)
class ExportSpec:
    """A model SOURCE that is not an ONNX file (a Hugging Face folder, a TorchScript or torch.export file, a
    `module:callable`): `recommend` exports it to `RecommendConfig.model.path` (RUN/model.onnx) before analysing
    it, and records the export in report.json's `model.export`."""

    source: str
    options: ExportOptions = field(default_factory=ExportOptions)

    def to_dict(self) -> dict:
        return {"source": self.source, "options": self.options.to_dict()}


@dataclass(frozen=True)
class RecommendConfig:
    model: ModelSpec
    slo: Slo
    out_dir: Path
    budget_s: float = DEFAULT_BUDGET_S
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    batch_size: int | None = None  # --batch: judge the SLO at this batch size (default 1)
    backends: tuple[str, ...] = ()  # empty: every registered backend
    resume: bool = False
    json_path: Path | None = None
    catalog_paths: tuple[Path, ...] = ()
    providers: tuple[str, ...] = ()
    region: str | None = None
    qps: float | None = None
    utilisation: float = 0.7
    local_price_per_hour: float | None = None
    tolerance: float = DEFAULT_TOLERANCE  # max relative error of reduced-precision candidates
    cache_dir: Path = field(default_factory=default_cache_dir)
    memory_limit_mib: float | None = None  # per isolated worker; None: 80 % of this machine's memory
    trial_timeout_s: float | None = None  # per isolated worker; None: derived from the backend's budget share
    harness: HarnessSettings = field(default_factory=HarnessSettings)
    make_artifact: bool = True
    cluster: str | None = None  # "ray://HOST:PORT" or "auto": also profile on the cluster's instance nodes
    tvm_rpc: RpcDevice | None = None  # --tvm-rpc: also tune TVM on the device registered under this tracker key
    # set when SOURCE is not ONNX; then model.path is the run folder's model.onnx that the export writes. Not in
    # the fingerprint: the exported file's sha256 is, and a resume reuses the run folder's export (see
    # advisor.exporting.run_export), so a changed source or export option shows up as a different model
    export: ExportSpec | None = None
    calibration_data: str | None = None  # --calibration-data: folder or module:function (advisor.sample_data)
    eval_data: str | None = None  # --eval-data: samples with expected results (advisor.accuracy)
    eval_metric: str | None = None  # --eval-metric module:function; None: the default metric for the data
    max_accuracy_drop: float | None = None  # --max-accuracy-drop; None: advisor.accuracy.DEFAULT_MAX_DROP

    def __post_init__(self):
        if self.budget_s <= 0:
            raise UserError("--budget must be positive")
        if not self.batch_sizes or any(b <= 0 for b in self.batch_sizes):
            raise UserError("--batch-sizes must be positive integers")
        if self.batch_size is not None and self.batch_size <= 0:
            raise UserError("--batch must be a positive integer")
        if self.qps is not None and self.qps <= 0:
            raise UserError("--qps must be positive")
        if not 0 < self.utilisation <= 1:
            raise UserError("--utilisation must be in (0, 1]")
        if self.trial_timeout_s is not None and self.trial_timeout_s <= 0:
            raise UserError("--trial-timeout must be positive")
        if self.memory_limit_mib is not None and self.memory_limit_mib <= 0:
            raise UserError("--memory-limit must be positive")
        if self.tolerance <= 0:
            raise UserError("--tolerance must be positive")
        if self.tvm_rpc is not None:
            _check_rpc_device(self.tvm_rpc)
        if self.eval_data is None and (self.eval_metric is not None or self.max_accuracy_drop is not None):
            raise UserError("--eval-metric and --max-accuracy-drop need --eval-data (the samples to judge accuracy on)")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise UserError("--max-accuracy-drop must be zero or positive")

    @property
    def accuracy_drop(self) -> float:
        from advisor.accuracy import DEFAULT_MAX_DROP

        return DEFAULT_MAX_DROP if self.max_accuracy_drop is None else self.max_accuracy_drop

    @property
    def slo_batch_size(self) -> int:
        return self.batch_size or 1

    def fingerprint(self, model_sha256: str, data_digests: dict | None = None) -> dict:
        """What must not change between a run and its --resume (anything that changes trial identities or how a
        trial is judged). `data_digests`: the sha256 of the calibration and eval samples, when given."""
        fingerprint = {"model_sha256": model_sha256,
                       "input_shapes": {k: list(v) for k, v in self.model.input_shapes.items()},
                       "batch_sizes": list(self.batch_sizes), "batch_size": self.batch_size,
                       "tolerance": self.tolerance}
        if data_digests:  # only when given, so runs without them resume as before
            fingerprint["data"] = {**data_digests, "eval_metric": self.eval_metric,
                                   "max_accuracy_drop": self.accuracy_drop if self.eval_data else None}
        return fingerprint

    def settings_dict(self) -> dict:
        return {"budget_s": self.budget_s, "batch_sizes": list(self.batch_sizes), "batch_size": self.batch_size,
                "backends": list(self.backends), "qps": self.qps, "utilisation": self.utilisation,
                "tolerance": self.tolerance, "local_price_per_hour": self.local_price_per_hour,
                "providers": list(self.providers), "region": self.region,
                "catalogs": [str(p) for p in self.catalog_paths], "harness": asdict(self.harness),
                "out_dir": str(self.out_dir), "cache_dir": str(self.cache_dir), "cluster": self.cluster,
                "tvm_rpc": self.tvm_rpc.to_dict() if self.tvm_rpc else None,
                "calibration_data": self.calibration_data, "eval_data": self.eval_data,
                "eval_metric": self.eval_metric,
                "max_accuracy_drop": self.accuracy_drop if self.eval_data else None}


RPC_TARGET_EXAMPLE = '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "num-cores": 4}'


def tvm_rpc_device(address: str | None, key: str | None, target_json: str | None) -> RpcDevice | None:
    """--tvm-rpc HOST:PORT, --tvm-rpc-key KEY and --tvm-rpc-target JSON as one device (None when none is given).
    Only the text is checked here; whether the tracker answers is checked when the run starts."""
    if address is None:
        if key is not None or target_json is not None:
            raise UserError("--tvm-rpc-key and --tvm-rpc-target need --tvm-rpc HOST:PORT (the TVM RPC tracker)")
        return None
    host, _, port = address.strip().rpartition(":")
    host = host.strip("[]")  # [::1]:9190
    if not host or not re.fullmatch(r"\d{1,5}", port):
        raise UserError(f"--tvm-rpc must be HOST:PORT of a TVM RPC tracker, e.g. 127.0.0.1:9190, not {address!r}")
    if key is None:
        raise UserError("--tvm-rpc needs --tvm-rpc-key KEY, the key the device registered with at the tracker")
    target: dict = {}
    if target_json is not None:
        try:
            target = json.loads(target_json)
        except ValueError as error:
            raise UserError(f"--tvm-rpc-target is not JSON ({error}); e.g. {RPC_TARGET_EXAMPLE}") from None
        if not isinstance(target, dict):
            raise UserError(f"--tvm-rpc-target must be a JSON object, e.g. {RPC_TARGET_EXAMPLE}")
    return RpcDevice(host, int(port), key, target)


def _check_rpc_device(device: RpcDevice) -> None:
    if not 0 < device.tracker_port < 65536:
        raise UserError(f"--tvm-rpc port must be 1-65535, not {device.tracker_port}")
    if not re.fullmatch(r"[\w.+-]+", device.key):
        raise UserError(f"--tvm-rpc-key must be letters, digits and . _ + - only, not {device.key!r}")
    target = device.tvm_target
    if target.get("kind", "llvm") != "llvm":
        raise UserError(f"--tvm-rpc-target must be a JSON object for a CPU (llvm) TVM target, e.g. "
                        f"{RPC_TARGET_EXAMPLE}")
    if "num-cores" in target and not (isinstance(target["num-cores"], int) and target["num-cores"] > 0):
        raise UserError("--tvm-rpc-target num-cores must be a positive integer")
