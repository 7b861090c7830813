"""Cluster specs: the shipped examples load, bad fields are named, calibration replaces the CPU's efficiencies."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.perf import engine_profile
from switchboard.sim.cluster import resolve_cluster, load_cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clusters"


@pytest.mark.parametrize("name", ["hetero-32.yaml", "many-experts.yaml", "local-cpu.yaml"])
def test_examples_load(name):
    spec = load_cluster(EXAMPLES / name)
    assert resolve_cluster(spec).workers


def test_hetero_32_has_32_devices_and_hosts_every_expert():
    built = resolve_cluster(load_cluster(EXAMPLES / "hetero-32.yaml"))
    assert built.num_devices == 32
    assert {e for e, _ in built.profiles} == set(built.expert_ids)
    assert len(built.expert_ids) == 9


def test_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("pools:\n  - {hardware: h100, workers: 0}\n")
    with pytest.raises(ValueError, match=r"c\.yaml: pools\.0\.workers"):
        load_cluster(bad)
    bad.write_text("pools:\n  - {hardware: tpu}\n")
    with pytest.raises(ValueError, match="unknown hardware 'tpu'"):
        load_cluster(bad)


def test_calibration_section_overrides_the_catalog(tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text(
        "pools: [{hardware: cpu}]\n"
        "experts: [{id: smol, params_b: 0.135, bytes_per_param: 0.625}]\n"
        "calibration: {cpu: {params_b: 0.135, bytes_per_param: 0.625, decode_tokens_per_s: 90, cold_start_s: 2.0}}\n"
    )
    profile = resolve_cluster(load_cluster(path)).profiles[("smol", "cpu")]
    assert profile.decode_tokens_per_s(1) == pytest.approx(90.0)
    assert profile.cold_start_s == pytest.approx(2.0)
    assert engine_profile(0.135, "cpu", bytes_per_param=0.625).decode_tokens_per_s(1) != pytest.approx(90.0)
