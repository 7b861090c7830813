"""An upstream's 429 (issue 14, item 3): not an expert failure. The request fails over to the next expert of
the ranking when one qualifies, else the client gets a 429 carrying the upstream's Retry-After; the upstream is
not asked again inside that window; the circuit breaker does not count it. Real gateway and mock upstream over
HTTP, the official openai client as the caller."""

from __future__ import annotations

import json

import openai
import pytest

from switchboard.config import parse_config
from switchboard.engines.base import EngineRateLimited, GenerationRequest
from switchboard.engines.openai_upstream import OpenAIUpstreamEngine
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread
from switchboard.testing.upstream import MockUpstream

MESSAGES = [{"role": "user", "content": "hi"}]


def _config(upstream_url: str) -> str:
    def expert(expert_id: str, model: str, fallbacks: str = "") -> str:
        return f"""
  - id: {expert_id}
    backend: {{kind: openai, base_url: "{upstream_url}", model: {model}}}{fallbacks}"""

    return "experts:" + "".join([
        expert("ok", "mock"),
        expert("limited", "fail-429", "\n    fallbacks: [ok]"),
        expert("limited-alone", "fail-429"),
    ]) + """
failover:
  expert_circuit: {failure_threshold: 2, window_s: 60, cooldown_s: 30}
"""


@pytest.fixture(scope="module")
def upstream():
    return MockUpstream(num_chunks=3)


@pytest.fixture(scope="module")
def served(upstream):
    with serve_in_thread(upstream) as upstream_base:
        app = build_app(parse_config(_config(upstream_base + "/v1")))
        with serve_in_thread(app) as url:
            yield url, app


@pytest.fixture
def client(served):
    with openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.mark.parametrize("stream", [False, True])
def test_a_rate_limited_expert_fails_over_to_the_next_in_its_ranking(client, stream):
    raw = client.chat.completions.with_raw_response.create(model="limited", messages=MESSAGES, stream=stream)
    assert raw.headers["x-switchboard-expert"] == "ok"
    assert [f["error"] for f in json.loads(raw.headers["x-switchboard-failover"])] == ["upstream_rate_limited"]
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "tok0 tok1 tok2 "
    else:
        assert raw.parse().choices[0].message.content == "mock answer"


def test_without_a_fallback_the_client_gets_429_with_the_upstreams_retry_after_and_no_retry_hammers_it(client, served, upstream):
    seen_before = upstream.requests_seen
    with pytest.raises(openai.RateLimitError) as first:
        client.chat.completions.create(model="limited-alone", messages=MESSAGES)
    assert first.value.response.headers["retry-after"] == "2"  # the upstream's own
    assert "limited-alone" in first.value.message and "rate limit" in first.value.message
    assert upstream.requests_seen == seen_before + 1
    for stream in (False, True, False, True):  # inside the Retry-After window: answered without asking the upstream
        with pytest.raises(openai.RateLimitError) as again:
            client.chat.completions.create(model="limited-alone", messages=MESSAGES, stream=stream)
        assert again.value.response.headers["retry-after"] in ("1", "2")
    assert upstream.requests_seen == seen_before + 1
    # Five 429s against a breaker that opens at two failures: it stays closed (a 429 is not ill health).
    circuits = served[1].state.gateway.fleet.expert_circuits
    assert circuits.describe("limited-alone")["state"] == "closed"
    assert circuits.describe("limited-alone")["recent_failures"] == 0


async def test_the_engine_waits_out_retry_after_on_its_own_clock(upstream):
    now = [1000.0]
    with serve_in_thread(upstream) as base:
        engine = OpenAIUpstreamEngine("limited", base + "/v1", "fail-429", clock=lambda: now[0])
        request = GenerationRequest("r1", "chat", {"model": "limited", "messages": MESSAGES}, 16, 3)
        try:
            seen_before = upstream.requests_seen
            with pytest.raises(EngineRateLimited) as first:
                await engine.complete(request)
            assert first.value.retry_after_s == 2.0 and first.value.status == 429
            now[0] += 1.5
            with pytest.raises(EngineRateLimited) as blocked:
                await engine.complete(request)
            assert blocked.value.retry_after_s == pytest.approx(0.5)
            assert upstream.requests_seen == seen_before + 1
            now[0] += 0.6  # past the window: asked again
            with pytest.raises(EngineRateLimited):
                await engine.complete(request)
            assert upstream.requests_seen == seen_before + 2
        finally:
            await engine.stop()
