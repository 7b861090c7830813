from __future__ import annotations

import pytest

from switchboard.config import ConfigError, load_config, parse_config
from switchboard.config.default import DEFAULT_EXPERT_ID, default_config, parse_size_b

MINIMAL = """\
experts:
  - id: mock
    backend: {kind: openai, base_url: "http://127.0.0.1:9911/v1", model: mock}
  - id: small
    backend: {kind: simulated}
"""


def test_the_minimal_config_is_complete():
    cfg = parse_config(MINIMAL)
    assert [e.id for e in cfg.experts] == ["mock", "small"]
    assert cfg.default_expert_id == "mock"
    assert cfg.workers[0].hardware == "cpu"
    assert cfg.experts[1].backend.kind == "simulated"


def test_the_default_config_serves_smollm2_and_the_routing_experts():
    cfg = default_config()
    assert cfg.default_expert_id == DEFAULT_EXPERT_ID
    assert cfg.expert(DEFAULT_EXPERT_ID).backend.kind == "llamacpp"
    simulated = [e for e in cfg.experts if e.backend.kind == "simulated"]
    assert len(simulated) == 9
    big = cfg.expert("llama3-chatqa-1.5-70b")
    assert big.params_b == 70 and big.usd_per_mtok_input == 0.9


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (MINIMAL.replace("kind: simulated", "kind: quantum"), [":5:", "experts[1].backend", "quantum"]),
        (MINIMAL + "    params_b: -3\n", [":6:", "experts[1].params_b", "greater than 0"]),
        (MINIMAL + "    colour: blue\n", [":6:", "experts[1].colour", "Extra inputs"]),
        ("experts: []\n", [":1:", "experts", "at least 1"]),
        ("experts:\n  - backend: {kind: simulated}\n", [":2:", "experts[0].id", "Field required"]),
        (MINIMAL + "defaults: {expert: nobody}\n", ["nobody"]),
        (MINIMAL.replace("id: small", "id: mock"), ["unique", "mock"]),
        (MINIMAL.replace("id: small", "id: auto"), ["reserved"]),
        ("experts: [\n", ["invalid YAML"]),
        ("", ["empty"]),
    ],
)
def test_errors_name_the_field_and_line(text, needles):
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="cfg.yaml")
    message = str(info.value)
    for needle in needles:
        assert needle in message, message


def test_load_config_reads_files_and_reports_missing_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL)
    assert load_config(path).experts[0].id == "mock"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("size", "billions"), [("8B", 8.0), ("135M", 0.135), (7, 7.0), ("70b", 70.0)])
def test_parse_size(size, billions):
    assert parse_size_b(size) == pytest.approx(billions)
