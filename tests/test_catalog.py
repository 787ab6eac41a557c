import pytest

from advisor.errors import UserError
from hwprofiles.catalog import load_catalog

REQUIRED = ["c6a.large", "c6a.xlarge", "c7i.large", "c7i.xlarge", "c7i.2xlarge", "c7a.large", "c7g.large",
            "m7i.xlarge", "g4dn.xlarge", "g5.xlarge", "g6.xlarge", "p4d.24xlarge", "p5.48xlarge"]


def test_bundled_catalogue():
    catalog = load_catalog()
    assert len(catalog) >= 25
    names = {i.name for i in catalog.instances}
    assert set(REQUIRED) <= names
    assert {i.provider for i in catalog.instances} == {"aws", "gcp", "azure"}
    gpus = {i.gpu.model for i in catalog.instances if i.gpu}
    assert gpus >= {"T4", "A10G", "L4", "L40S", "A100", "H100"}
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
