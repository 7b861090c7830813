from __future__ import annotations

import httpx
import pytest

from switchboard.config import parse_config

# Two instant simulated experts with prices; `paid` keeps a replica warm, `spare` scales to zero after 1 s idle.
CONFIG = """
workers:
  - {id: gpu-a, hardware: l4, memory_gb: 24, usd_per_hour: 0.8}
  - {id: gpu-b, hardware: h100, memory_gb: 80, usd_per_hour: 4.0}
experts:
  - id: paid
    backend: {kind: simulated, hardware: l4, time_scale: 0}
    params_b: 1
    usd_per_mtok_input: 2.0
    usd_per_mtok_output: 8.0
  - id: spare
    backend: {kind: simulated, hardware: h100, time_scale: 0}
    params_b: 1
    usd_per_mtok_input: 0.5
    usd_per_mtok_output: 1.5
control_plane:
  step_interval_s: 0.2
  policies:
    keepalive: {kind: fixed, idle_timeout_s: 1}
    autoscale: {min_replicas: 0, max_replicas: 2, downscale_delay_s: 0, min_replicas_by_expert: {paid: 1}}
    prewarm: {kind: none}
    prewarm_grace_s: 0
"""


@pytest.fixture
def config():
    return parse_config(CONFIG)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """`/metrics` as {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics").text
    return {(s.name, frozenset(s.labels.items())): s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
