"""A real llama.cpp replica process killed under the gateway (SIGKILL, as the OOM killer would):

- before its first token, the request fails over invisibly (here to the fallback expert);
- mid-stream, the stream ends with an explicit error event naming the expert, and the request is logged with
  an error outcome;
- either way the dead replica is replaced, and every request is in the request log exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import httpx
import openai
import pytest
from sqlalchemy import create_engine, select

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.storage.models import requests_table
from switchboard.testing.servers import serve_in_thread

pytestmark = pytest.mark.llamacpp

CONFIG = """
experts:
  - id: smol
    backend: {{kind: llamacpp, n_threads: 1}}
    params_b: 0.135
    context_tokens: 1024
    ttft_slo_s: 60
    fallbacks: [backup]
  - id: backup
    backend: {{kind: simulated, time_scale: 0}}
control_plane:
  step_interval_s: 3600  # no periodic health check: the request itself must meet the dead process
  policies:
    keepalive: {{kind: fixed, idle_timeout_s: 3600}}
    prewarm: {{kind: none}}
failover: {{retries_per_expert: 0}}
storage: {{url: "{url}", flush_interval_s: 0.05}}
"""


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    db_url = f"sqlite:///{tmp_path_factory.mktemp('replica-faults')}/requests.db"
    app = build_app(parse_config(CONFIG.format(url=db_url)))
    sent: list[str] = []
    with serve_in_thread(app, startup_timeout_s=180) as url:
        http = httpx.Client(event_hooks={"response": [lambda r: sent.append(r.headers["x-request-id"]) if "x-request-id" in r.headers else None]},
                            timeout=180)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, http_client=http)
        expected: dict[str, tuple[str, str]] = {}  # request id → (expert, outcome) its log row must show
        yield app.state.gateway.fleet, client, expected
        http.close()
    engine = create_engine(db_url)
    with engine.connect() as connection:
        logged = {r.id: (r.expert, r.outcome) for r in connection.execute(select(requests_table.c.id, requests_table.c.expert, requests_table.c.outcome))}
        counts = Counter(r.id for r in connection.execute(select(requests_table.c.id)))
    engine.dispose()
    assert sent and all(counts[i] == 1 for i in sent), {i: counts[i] for i in sent}
    assert {i: logged[i] for i in expected} == expected


def _warm_smol(fleet, client) -> int:
    """Makes sure a smol replica is warm (starting one if needed); returns its worker process id."""
    client.completions.create(model="smol", prompt="Hello", max_tokens=1)
    live = [r for r in fleet.live.values() if r.expert.id == "smol" and getattr(r.engine, "is_running", False)]
    assert live, "no running smol replica after a request to it"
    return live[0].engine.process.pid


def _kill(fleet, pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    engines = [r.engine for r in fleet.live.values() if r.expert.id == "smol" and r.engine.process is not None and r.engine.process.pid == pid]
    _wait_for(lambda: all(e.process is None or e.process.returncode is not None for e in engines), 10, "the worker to be reaped")


@pytest.mark.parametrize("stream", [False, True])
def test_replica_killed_before_the_first_token_fails_over_invisibly(served, stream):
    fleet, client, expected = served
    pid = _warm_smol(fleet, client)
    _kill(fleet, pid)
    if stream:
        with client.chat.completions.with_streaming_response.create(model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                                                     stream=True) as response:
            headers = response.headers
            chunks = list(response.parse())
        assert chunks[-1].choices[0].finish_reason is not None
    else:
        raw = client.chat.completions.with_raw_response.create(model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        headers = raw.headers
        assert raw.parse().choices[0].message.content
    assert headers["x-switchboard-expert"] == "backup"
    failed = json.loads(headers["x-switchboard-failover"])
    assert [a["expert"] for a in failed] == ["smol"] and failed[0]["error"] == "expert_unavailable"
    # The dead replica is gone from the fleet; the next request to smol starts a fresh one.
    assert failed[0]["replica"] not in fleet.live
    expected[headers["x-request-id"]] = ("backup", "ok")


def test_replica_killed_mid_stream_ends_with_an_explicit_error_event(served):
    fleet, client, expected = served
    pid = _warm_smol(fleet, client)
    stream = client.completions.create(model="smol", prompt="1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=400, temperature=0, stream=True)
    texts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            texts.append(chunk.choices[0].text if chunk.choices else "")
            if len(texts) == 3:
                _kill(fleet, pid)
    assert len(texts) >= 3  # tokens arrived before the kill
    assert "smol" in caught.value.message and "mid-stream" in caught.value.message
    expected[stream.response.headers["x-request-id"]] = ("smol", "error")
    assert _warm_smol(fleet, client) != pid  # replaced
