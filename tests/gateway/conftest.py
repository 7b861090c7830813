from __future__ import annotations

import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread
from switchboard.testing.upstream import MockUpstream


@pytest.fixture(scope="session")
def upstream() -> MockUpstream:
    return MockUpstream(num_chunks=5)


@pytest.fixture(scope="session")
def upstream_url(upstream: MockUpstream):
    with serve_in_thread(upstream) as url:
        yield url + "/v1"


def gateway_config_text(upstream_url: str) -> str:
    def openai(expert_id: str, model: str, extra: str = "") -> str:
        return f"""
  - id: {expert_id}
    backend: {{kind: openai, base_url: "{upstream_url}", model: {model}{extra}}}
    context_tokens: 1000
    max_output_tokens: 500"""

    return "experts:" + "".join([
        openai("mock", "mock"),
        openai("broken", "fail-500"),
        openai("limited", "fail-429"),
        openai("garbage", "garbage"),
        openai("stall", "stall", ", read_timeout_s: 1"),
        openai("cut", "cut-mid-stream"),
        openai("picky", "reject-400"),
        openai("down", "mock", "") .replace(upstream_url, "http://127.0.0.1:9/v1"),
    ]) + """
  - id: small
    backend: {kind: simulated, time_scale: 0.01}
defaults:
  expert: small
"""


@pytest.fixture(scope="session")
def gateway_config(upstream_url):
    return parse_config(gateway_config_text(upstream_url))


@pytest.fixture(scope="session")
def gateway_url(gateway_config):
    app = build_app(gateway_config)
    with serve_in_thread(app) as url:
        yield url
    fleet = app.state.gateway.fleet
    # Every lease was released: nothing leaks load whatever the test did, in the engines or the fleet model.
    leaked = [r.replica_id for r in [*fleet.live.values(), *fleet.external.values()] if r.num_outstanding]
    assert not leaked, f"replicas still hold load after all requests ended: {leaked}"
    model = fleet.model
    assert not model.unplaced
    assert all(r.load.num_outstanding_requests == 0 for r in model.replicas.values())
