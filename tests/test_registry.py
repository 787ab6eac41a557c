"""The backend registry is the one place a backend is declared: one entry, read by every part of the advisor."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from advisor.errors import UserError
from advisor.measure import LatencyStats
from advisor.model import ModelSpec, analyze
from advisor.ranking import CandidateCurve, RankingInputs, rank
from advisor.slo import Slo
from advisor.trials import Trial
from hwprofiles.catalog import load_catalog
from hwprofiles.targets import RpcDevice, detect_targets
from tuners import registry
from tuners.base import Capabilities, Tuner

ROOT = Path(__file__).resolve().parents[1]
BACKEND_MODULES = ("tuners.onnxruntime", "tuners.tvm", "tuners.tensorrt", "tuners.openvino", "onnxruntime", "tvm",
                   "tensorrt", "openvino")

# a plugin backend that declares every capability; `click` stands for its package: installed wherever advisor is
# (a dependency), and neither a core package nor another backend's (pyflakes was used here: not installed by CI)
TOY = {"name": "toy", "target": "toy_tuner:ToyTuner", "extra": "toy", "budget_weight": 3.0,
       "capabilities": {"packages": ["click"], "thread_setting": "workers", "portable_across_cpus": False,
                        "remote_devices": True, "any_batch": False}}


def _run(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@pytest.fixture
def toy(monkeypatch):
    """The toy plugin declared through ADVISOR_TUNERS in its JSON form (re-read on change: no reload needed)."""
    monkeypatch.setenv(registry.PLUGINS_VARIABLE, json.dumps([TOY]))
    return registry.TUNERS["toy"]


# ---- lazy: nothing imported or parsed at import time ----------------------------------------------------------


def test_importing_the_registry_imports_no_backend_and_parses_nothing():
    done = _run("import sys\n"
                "import tuners.registry as registry\n"
                f"print(sorted(m for m in sys.modules if m in {BACKEND_MODULES!r}))\n"
                "try:\n"
                "    registry.tuner_names()\n"
                "except Exception as error:\n"
                "    print(type(error).__name__, error)\n",
                ADVISOR_TUNERS="broken")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\nUserError ADVISOR_TUNERS entry 'broken' is not NAME=module:Class\n"


def test_every_builtin_entry_names_a_tuner_class_of_that_name():
    assert registry.tuner_names()[:4] == ["onnxruntime", "tvm", "tensorrt", "openvino"]
    for entry in registry.BUILTIN:
        tuner = registry.load_tuner(entry.name)
        assert isinstance(tuner, Tuner) and tuner.name == entry.name
        assert tuner.capabilities is entry.capabilities and entry.capabilities.packages


# ---- one entry declares everything, and every place reads it --------------------------------------------------


def test_a_plugins_declared_packages_are_in_the_run_environment(toy):
    from advisor.environment import package_versions, packages

    assert "click" in packages() and "openvino" in packages() and "apache-tvm" in packages()
    assert package_versions()["click"] == version("click")
    assert "toy_tuner" not in sys.modules  # read from the entry: the plugin's module (which does not exist) unused


def _trial(backend: str, config: dict, batch: int, center_ms: float, phase: str) -> Trial:
    samples = np.random.default_rng(batch).normal(center_ms, center_ms * 0.02, 200)
    return Trial(id=f"{backend}-{json.dumps(config, sort_keys=True)}-b{batch}-{phase}", backend=backend,
                 target="cpu", config=config, batch_size=batch, status="ok", phase=phase, peak_rss_mib=100.0,
                 latency=LatencyStats.from_samples(samples))


def test_the_cost_model_sees_a_plugins_thread_setting(toy, cnn_path):
    """Trials at two thread counts under the plugin's own key: the fit learns thread scaling from them (with one
    thread count it would have to assume it: 'one thread count measured'), and a curve reports its threads."""
    cpu = detect_targets()[0]
    cpu = replace(cpu, cpu=replace(cpu.cpu, physical_cores=2, logical_cores=2))
    trials = [_trial("toy", {"workers": 0}, b, 1.0 * b ** 0.8, "sweep") for b in (1, 2, 4)]
    trials += [_trial("toy", {"workers": 1}, 1, 1.8, "search")]
    inputs = RankingInputs(info=analyze(ModelSpec(cnn_path)), trials=trials, targets=(cpu,), catalog=load_catalog(),
                           slo=Slo(500.0, "p99"))
    fit = rank(inputs).costmodel["targets"]["cpu"]["fits"]["toy"]
    assert fit["observations"] == 4
    assert not any("one thread count measured" in note for note in fit["notes"]), fit["notes"]
    assert CandidateCurve("toy", "cpu", {"workers": 3}, {}).threads() == 3
    assert CandidateCurve("onnxruntime", "cpu", {"workers": 3}, {}).threads() == 0  # not ONNX Runtime's key
    assert registry.thread_count("openvino", {"inference_num_threads": 2}) == 2


def test_a_plugins_other_capabilities_are_read_from_its_entry(toy):
    from advisor.ranking import _portability

    assert toy.install_hint == "pip install 'advisor[toy]'" and toy.budget_weight == 3.0
    assert not registry.accepts_any_batch("toy") and registry.accepts_any_batch("openvino")
    assert _portability("toy", "same_vendor") and not _portability("openvino", "same_vendor")
    assert _portability("toy", "same") is None
    assert registry.remote_backends() == ["tvm", "toy"]
    remote = replace(detect_targets()[0], id="rpc:board", rpc=RpcDevice("127.0.0.1", 9190, "board"))
    refused = registry.load_tuner("onnxruntime").availability(remote)
    assert refused.reason == "a TVM RPC device runs only code built for it by tvm, toy"


def test_a_missing_package_names_the_entrys_install_hint(toy):
    class Toy(Tuner):
        name = "toy"
        probe = search = build = export = load_exported = None

    assert Toy().not_installed().reason == "click is not installed (pip install 'advisor[toy]')"
    assert Toy().versions() == {"click": version("click")}


def test_no_module_outside_tuners_keeps_backend_knowledge():
    """What used to be hand-kept beside the registry (a list of CPU-specific backends, ONNX Runtime's thread key
    read by the cost model, backend packages listed in the environment) stays out of advisor/."""
    pattern = re.compile(r"CPU_SPECIFIC_BACKENDS|intra_op_threads|\"apache-tvm\"|\"openvino\"|\"tensorrt\"")
    offenders = [f"{path.relative_to(ROOT)}: {match.group()}" for path in sorted((ROOT / "advisor").rglob("*.py"))
                 for match in pattern.finditer(path.read_text())]
    assert offenders == []


# ---- ADVISOR_TUNERS ---------------------------------------------------------------------------------------------


def test_the_name_form_declares_default_capabilities(monkeypatch):
    monkeypatch.setenv(registry.PLUGINS_VARIABLE, "faulty=faulty_tuners:FaultyTuner, other=pkg.mod:Other")
    assert registry.parse_backends("faulty,onnxruntime") == ["faulty", "onnxruntime"]
    assert registry.TUNERS["other"].target == "pkg.mod:Other"
    assert registry.capabilities_of("faulty") == Capabilities()
    assert registry.tuner_names()[-2:] == ["faulty", "other"] and len(registry.TUNERS) == len(registry.BUILTIN) + 2


@pytest.mark.parametrize("value, message", [
    ("broken", "ADVISOR_TUNERS entry 'broken' is not NAME=module:Class"),
    ('[{"name": "x", "target": "m:C", "capabilities": {"threads": "n"}}]',
     "ADVISOR_TUNERS: unknown field capabilities.threads"),
    ('[{"name": "x", "target": "m:C", "weight": 2}]', "ADVISOR_TUNERS: unknown field weight"),
    ('[{"name": "x", "target": "m:C", "capabilities": {"remote_devices": "yes"}}]',
     "ADVISOR_TUNERS: entry 0.capabilities.remote_devices: Input should be a valid boolean"),
    ('[{"name": "x", "target": "nocolon"}]', "ADVISOR_TUNERS entry 'x': target 'nocolon' is not module:Class"),
    ('[{"name": "x"', "ADVISOR_TUNERS is not valid JSON"),
    ('{"name": "x", "target": "m:C"}', "ADVISOR_TUNERS in JSON form must be a list of entries"),
])
def test_a_malformed_plugin_declaration_is_one_user_error(monkeypatch, value, message):
    monkeypatch.setenv(registry.PLUGINS_VARIABLE, value)
    with pytest.raises(UserError) as raised:
        registry.tuner_names()
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
