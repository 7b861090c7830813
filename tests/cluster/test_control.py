"""What gateways sharing one control actor check of each other (no Ray needed)."""

from __future__ import annotations

from switchboard.cluster.ray_control import config_fingerprint
from switchboard.config import parse_config


def test_gateways_compare_configs_but_not_how_they_reach_the_cluster():
    def config(address: str, params_b: float) -> str:
        return f"cluster: {{kind: ray, address: '{address}'}}\nexperts: [{{id: a, backend: {{kind: simulated}}, params_b: {params_b}}}]"

    same = config_fingerprint(parse_config(config("auto", 7)))
    assert config_fingerprint(parse_config(config("10.0.0.1:6379", 7))) == same
    assert config_fingerprint(parse_config(config("auto", 8))) != same
