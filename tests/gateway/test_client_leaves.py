"""A client that leaves before its whole (non-streamed) answer is ready — its timeout — ends the request in the
gateway: the engine call is cancelled, the replica freed, the request counted `cancelled` (499). The gateway waited
out the whole answer before, then sent it to no one, while the engine generated for nobody."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

CONFIG = """
experts:
  - {id: slow, backend: {kind: simulated}, warm_at_start: true}
storage: {enabled: false}
"""


@pytest.fixture(scope="module")
def base():
    with serve_in_thread(build_app(parse_config(CONFIG))) as url:  # its replica warm (a modelled start: seconds)
        yield url


@pytest.mark.parametrize("path", ["chat", "completions"])
def test_a_client_that_times_out_cancels_its_whole_answer(base, path):
    cancelled_before = _num_cancelled(base)
    impatient = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):  # 900 tokens at an A10G's modelled pace: many seconds
        if path == "chat":
            impatient.chat.completions.create(model="slow", messages=[{"role": "user", "content": "a long story"}], max_tokens=900)
        else:
            impatient.completions.create(model="slow", prompt="a long story", max_tokens=900)
    deadline = time.monotonic() + 5
    while _num_cancelled(base) != cancelled_before + 1:
        assert time.monotonic() < deadline, "the gateway went on waiting for an answer no one would read"
        time.sleep(0.05)
    replicas = [r for e in httpx.get(base + "/admin/fleet").json()["experts"] for r in e["replicas"]]
    assert [r["num_running"] for r in replicas] == [0]
    answer = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=30).chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert answer.choices[0].message.content  # the next request is served as ever


def _num_cancelled(base: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith('switchboard_requests_total{expert="slow",outcome="cancelled"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
