import json

import pytest
import yaml

from advisor.errors import UserError
from hwprofiles.catalog import DTYPES, UnknownDtype, load_catalog

REQUIRED = ["c6a.large", "c6a.xlarge", "c7i.large", "c7i.xlarge", "c7i.2xlarge", "c7a.large", "c7g.large",
            "m7i.xlarge", "g4dn.xlarge", "g5.xlarge", "g6.xlarge", "p4d.24xlarge", "p5.48xlarge"]


def test_bundled_catalogue():
    catalog = load_catalog()
    assert len(catalog) >= 25
    names = {i.name for i in catalog.instances}
    assert set(REQUIRED) <= names
    assert {i.provider for i in catalog.instances} == {"aws", "gcp", "azure"}
    gpus = {i.gpu.model for i in catalog.instances if i.gpu}
    assert gpus >= {"T4", "A10G", "L4", "L40S", "A100", "H100", "H200"}
    micro = {i.cpu.microarchitecture for i in catalog.instances if not i.gpu}
    assert {"sapphirerapids", "znver3", "znver4", "neoverse-v1", "neoverse-n1"} <= micro
    for instance in catalog.instances:
        assert instance.price_source and instance.spec_source and instance.price_date and instance.spec_date


def test_filters():
    assert {i.provider for i in load_catalog(providers=["gcp"]).instances} == {"gcp"}
    assert {i.region for i in load_catalog(region="eastus").instances} == {"eastus"}
    with pytest.raises(UserError, match="unknown provider"):
        load_catalog(providers=["ibm"])
    with pytest.raises(UserError, match="no catalogue instance is left"):
        load_catalog(region="mars-1")


GOOD = """
provider: aws
defaults: {region: us-east-1, price_source: my quote, price_date: "2026-01-01", spec_source: datasheet,
           spec_date: "2026-01-01"}
instances:
  - {name: c6a.large, vcpus: 2, memory_gib: 4, price_per_hour: 0.05,
     cpu: {vendor: amd, model: EPYC, microarchitecture: znver3, isa: [avx2], physical_cores: 1, smt: true},
     peak: {fp32_gflops: 100, fp16_gflops: 100, int8_gops: 200, bandwidth_gbs: 6}}
  - {name: my.box, vcpus: 8, memory_gib: 32, price_per_hour: 0.3,
     cpu: {vendor: intel, model: Xeon, microarchitecture: icelake-server, isa: [avx512f], physical_cores: 4},
     peak: {fp32_gflops: 800, fp16_gflops: 800, int8_gops: 1600, bandwidth_gbs: 40}}
"""


def test_user_file_adds_and_replaces(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD)
    catalog = load_catalog([path])
    assert catalog.get("c6a.large").price_per_hour == 0.05
    assert catalog.get("my.box").cpu.microarchitecture == "icelake-server"
    assert len(catalog) == len(load_catalog()) + 1


@pytest.mark.parametrize("edit, message", [
    (("price_per_hour: 0.05", "price_per_hour: -1"), "entry 'c6a.large': field 'price_per_hour': Input should be "
                                                      "greater than 0"),
    (("vcpus: 8, ", ""), "entry 'my.box': field 'vcpus': Field required"),
    (('price_date: "2026-01-01"', "price_date: yesterday"), "field 'price_date': must be a date YYYY-MM-DD"),
    (("provider: aws", "provider: ibm"), "field 'provider': must be one of"),
    (("smt: true", "smt: true, colour: red"), "field 'cpu.colour': Extra inputs are not permitted"),
])
def test_broken_entries_name_file_entry_and_field(tmp_path, edit, message):
    path = tmp_path / "broken.yaml"
    path.write_text(GOOD.replace(*edit, 1))
    with pytest.raises(UserError) as error:
        load_catalog([path])
    assert f"catalog {path}:" in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text, message", [("instances: [", "not valid YAML"), ("- a\n- b\n", "'instances' list"),
                                           ("instances: [3]", "must be a mapping")])
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_catalog([path])


def test_missing_file():
    with pytest.raises(UserError, match="cannot read it"):
        load_catalog(["/does/not/exist.yaml"])


# --- per-GPU figures for the LLM planner (issue 14) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu_instances():
    return [i for i in load_catalog().instances if i.gpu is not None]


def test_llm_serving_sizes_are_listed(gpu_instances):
    names = {i.name for i in gpu_instances}
    assert {"g4dn.12xlarge", "g5.12xlarge", "g5.48xlarge", "g6.12xlarge", "g6.48xlarge", "g6e.12xlarge",
            "g6e.48xlarge", "p4de.24xlarge", "p5en.48xlarge", "g2-standard-48", "g2-standard-96", "a2-highgpu-4g",
            "a2-highgpu-8g", "a3-ultragpu-8g", "Standard_NC64as_T4_v3", "Standard_NC96ads_A100_v4",
            "Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4", "Standard_ND96isr_H100_v5"} <= names
    assert {i.gpu.count for i in gpu_instances} == {1, 4, 8}
    for instance in gpu_instances:
        assert instance.price_source and instance.price_date and instance.spec_source and instance.spec_date


def test_every_gpu_instance_has_the_figures_the_planner_needs(gpu_instances):
    for instance in gpu_instances:
        gpu = instance.gpu
        assert gpu.compute_capability is not None, instance.name
        assert gpu.memory_bandwidth_gbs is not None, instance.name
        assert gpu.peak_tflops("bf16") or gpu.peak_tflops("fp16"), instance.name


def test_fp8_peaks_only_from_compute_capability_8_9(gpu_instances):
    """fp8 tensor cores came with Ada (8.9: L4, L40S) and Hopper (9.0: H100, H200); T4 (7.5), A10G (8.6) and A100
    (8.0) have none, so their entries give no fp8 peak."""
    with_fp8 = {i.gpu.model for i in gpu_instances if i.gpu.peak_tflops("fp8") is not None}
    assert with_fp8 == {"L4", "L40S", "H100", "H200"}
    for instance in gpu_instances:
        if instance.gpu.peak_tflops("fp8") is not None:
            assert instance.gpu.compute_capability >= 8.9, instance.name
    assert {i.gpu.compute_capability for i in gpu_instances if i.gpu.model == "A10G"} == {8.6}


def test_eight_gpu_a100_h100_h200_instances_have_nvlink(gpu_instances):
    """NVLink 3 (A100) moves 600 GB/s per GPU in both directions together, NVLink 4 (H100/H200) 900: 300 and 450
    per direction."""
    big = [i for i in gpu_instances if i.gpu.count == 8 and i.gpu.model in {"A100", "H100", "H200"}]
    assert len(big) == 10  # p4d, p4de, p5, p5en, a2-highgpu-8g, a3-highgpu-8g, a3-ultragpu-8g, 3 Azure ND sizes
    for instance in big:
        link = instance.gpu.interconnect
        assert link is not None and link.kind in ("nvswitch", "nvlink"), instance.name
        assert link.bandwidth_gbs == (300 if instance.gpu.model == "A100" else 450), instance.name


def test_only_multi_gpu_instances_have_an_interconnect(gpu_instances):
    for instance in gpu_instances:
        assert (instance.gpu.interconnect is None) == (instance.gpu.count == 1), instance.name
    pcie = {i.name: i.gpu.interconnect.bandwidth_gbs for i in gpu_instances
            if i.gpu.interconnect is not None and i.gpu.interconnect.kind == "pcie"}
    assert pcie["g4dn.12xlarge"] == 16  # T4: PCIe Gen3 x16, 32 GB/s both ways
    assert pcie["g6e.48xlarge"] == 32  # L40S: PCIe Gen4 x16, 64 GB/s both ways


def test_instance_peak_is_the_per_gpu_figure_times_the_count(gpu_instances):
    """`peak` keeps its whole-instance convention. By hand for g6e.48xlarge, 8 L40S at 362.05 dense fp16 TFLOPS and
    864 GB/s: 8 x 362.05 = 2896.4 TFLOPS = 2,896,400 GFLOPS, 8 x 864 = 6912 GB/s. Older entries rounded the
    datasheet (p5.48xlarge: 8 x 989 = 7,912,000 against 8 x 1979 / 2 = 7,916,000), so the check allows 0.1%."""
    g6e = next(i for i in gpu_instances if i.name == "g6e.48xlarge")
    assert g6e.peak.fp16_gflops == 2_896_400 and g6e.peak.bandwidth_gbs == 6912
    for instance in gpu_instances:
        gpu, count = instance.gpu, instance.gpu.count
        assert instance.peak.fp32_gflops == pytest.approx(gpu.peak_tflops("fp32") * 1000 * count, rel=1e-3)
        assert instance.peak.fp16_gflops == pytest.approx(gpu.peak_tflops("fp16") * 1000 * count, rel=1e-3)
        assert instance.peak.int8_gops == pytest.approx(gpu.peak_tflops("int8") * 1000 * count, rel=1e-3)
        assert instance.peak.bandwidth_gbs == pytest.approx(gpu.memory_bandwidth_gbs * count, rel=1e-3)


def test_spot_prices_are_below_on_demand():
    priced = [i for i in load_catalog().instances if i.spot_price_per_hour is not None]
    assert len(priced) >= 40
    for instance in priced:
        assert instance.spot_price_per_hour < instance.price_per_hour, instance.name


def test_gpu_peak_tflops():
    """One GPU's dense peak: an H200 does 3958 fp8 TFLOPS with 2:4 sparsity, 1979 dense; an A100 has no fp8 tensor
    cores; a CPU instance has no GPU."""
    catalog = load_catalog()
    assert catalog.get("p5en.48xlarge").gpu_peak_tflops("fp8") == 1979
    assert catalog.get("p4d.24xlarge").gpu_peak_tflops("bf16") == 312
    assert catalog.get("p4d.24xlarge").gpu_peak_tflops("fp8") is None
    assert catalog.get("c7i.large").gpu_peak_tflops("bf16") is None
    assert [catalog.get("g4dn.xlarge").gpu.peak_tflops(d) for d in DTYPES] == [8.1, None, None, 65, None, 130, 260]
    with pytest.raises(UnknownDtype, match="unknown dtype 'fp4'"):
        catalog.get("p5.48xlarge").gpu_peak_tflops("fp4")
    with pytest.raises(ValueError):  # a ValueError, as the style asks of bad input
        catalog.get("c7i.large").gpu_peak_tflops("fp4")


OLD_GPU = """
provider: other
defaults: {region: lab, price_source: my quote, price_date: "2026-01-01", spec_source: datasheet,
           spec_date: "2026-01-01"}
instances:
  - {name: lab.a100x8, vcpus: 96, memory_gib: 1152, price_per_hour: 20,
     cpu: {vendor: amd, model: EPYC, microarchitecture: znver3, isa: [avx2], physical_cores: 48, smt: true},
     gpu: {model: A100, count: 8, memory_gib: 80},
     peak: {fp32_gflops: 156000, fp16_gflops: 2496000, int8_gops: 4992000, bandwidth_gbs: 16312}}
"""


def test_user_gpu_entry_without_the_llm_fields_still_loads(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_GPU)
    entry = load_catalog([path]).get("lab.a100x8")
    assert entry.gpu.count == 8 and entry.gpu.compute_capability is None and entry.gpu.tflops is None
    assert entry.gpu.memory_bandwidth_gbs is None and entry.gpu.interconnect is None
    assert entry.gpu_peak_tflops("bf16") is None
    assert entry.to_dict()["gpu"]["tflops"] is None
    with pytest.raises(UnknownDtype):  # a misspelt type fails even where there are no figures to look it up in
        entry.gpu_peak_tflops("bfloat16")


def test_user_gpu_entry_with_the_llm_fields(tmp_path):
    path = tmp_path / "new.json"
    path.write_text(json.dumps(yaml.safe_load(OLD_GPU.replace(
        "memory_gib: 80}", "memory_gib: 80, compute_capability: 8.0, memory_bandwidth_gbs: 2039, "
        "tflops: {bf16: 312, int8: 624}, interconnect: {kind: nvswitch, bandwidth_gbs: 300}}"))))
    gpu = load_catalog([path]).get("lab.a100x8").gpu
    assert (gpu.compute_capability, gpu.memory_bandwidth_gbs, gpu.peak_tflops("bf16"), gpu.peak_tflops("fp16"),
            gpu.interconnect.kind, gpu.interconnect.bandwidth_gbs) == (8.0, 2039, 312, None, "nvswitch", 300)


@pytest.mark.parametrize("addition, message", [
    ("memory_bandwidth_gbs: -2039", "field 'gpu.memory_bandwidth_gbs': Input should be greater than 0"),
    ("interconnect: {kind: infiniband, bandwidth_gbs: 50}",
     "field 'gpu.interconnect.kind': Input should be 'nvswitch', 'nvlink' or 'pcie'"),
    ("interconnect: {kind: nvlink, bandwidth_gbs: -300}",
     "field 'gpu.interconnect.bandwidth_gbs': Input should be greater than 0"),
    ("interconnect: {kind: nvlink}", "field 'gpu.interconnect.bandwidth_gbs': Field required"),
    ("tflops: {bf16: -312}", "field 'gpu.tflops.bf16': Input should be greater than 0"),
    ("tflops: {fp4: 10}", "field 'gpu.tflops.fp4': Extra inputs are not permitted"),
    ("compute_capability: 8.0, tflops: {fp8: 624}",
     "field 'gpu': an fp8 peak is given, but compute capability 8.0 has no fp8 tensor cores (they start at 8.9)"),
])
def test_bad_gpu_figures_name_file_entry_and_field(tmp_path, addition, message):
    path = tmp_path / "broken.yaml"
    path.write_text(OLD_GPU.replace("memory_gib: 80}", f"memory_gib: 80, {addition}}}"))
    with pytest.raises(UserError) as error:
        load_catalog([path])
    assert f"catalog {path}: entry 'lab.a100x8': {message}" == str(error.value)
