"""The sleep tier on real server processes behind the gateway: a `process` replica (the fake vLLM, which
implements vLLM's /sleep and /wake_up) goes warm → asleep (same process, weights "off") → woken by the next
request without a new process → stopped once asleep past `asleep_keepalive_s`; a replica whose engine cannot
sleep stays warm instead. Every request is in the request log exactly once."""

from __future__ import annotations

import sys
import time
from collections import Counter

import httpx
import openai
from sqlalchemy import create_engine, select

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.storage.models import requests_table
from switchboard.testing.servers import serve_in_thread

CONFIG = """
experts:
  - id: vllm
    backend: {{kind: process, command: ["{python}", "-m", "switchboard.testing.fake_vllm", "--port", "{{port}}", "--model", "{{model}}"],
              model: fake-8b, sleep: [POST, "/sleep?level=1"], wake: [POST, /wake_up], cold_start_s: 2, log_dir: "{logs}"}}
    params_b: 0.135
    warm_at_start: false
    ttft_slo_s: 30
  - id: plain
    backend: {{kind: process, command: ["{python}", "-m", "switchboard.testing.fake_vllm", "--port", "{{port}}", "--model", "{{model}}"],
              model: fake-plain, cold_start_s: 2, log_dir: "{logs}"}}
    params_b: 0.135
    warm_at_start: false
    ttft_slo_s: 30
workers: [{{id: local, hardware: cpu, memory_gb: 16, devices: [0, 1]}}]  # accelerators: sleeping frees them
control_plane:
  step_interval_s: 0.1
  policies:
    keepalive: {{kind: fixed, idle_timeout_s: 600, sleep_after_s: 0.5, asleep_keepalive_s: 3}}
    autoscale: {{min_replicas: 0, max_replicas: 1, downscale_delay_s: 0}}
    prewarm: {{kind: none}}
storage: {{url: "sqlite:///{db}", flush_interval_s: 0.05}}
"""


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


def _ask(client, model: str):
    return client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)


def test_warm_asleep_woken_then_stopped(tmp_path):
    config = parse_config(CONFIG.format(python=sys.executable, logs=tmp_path / "logs", db=tmp_path / "requests.db"))
    app = build_app(config)
    sent: list[str] = []
    with serve_in_thread(app, startup_timeout_s=60) as url:
        fleet = app.state.gateway.fleet
        http = httpx.Client(timeout=60, event_hooks={"response": [
            lambda r: sent.append(r.headers["x-request-id"]) if "x-request-id" in r.headers else None]})
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, http_client=http)

        first = _ask(client, "vllm")
        assert first.headers["x-switchboard-cold-start"] == "true" and first.parse().usage.completion_tokens == 3
        engine = next(r.engine for r in fleet.live.values() if r.expert.id == "vllm")
        pid = engine.process.pid
        _ask(client, "plain")

        _wait_for(lambda: engine.is_asleep and not any(r.expert.id == "vllm" for r in fleet.live.values()), 15,
                  "the idle vllm replica to go to sleep")
        assert engine.process.returncode is None  # the process stays
        assert httpx.get(f"http://127.0.0.1:{engine.port}/is_sleeping").json() == {"is_sleeping": True}
        view = httpx.get(url + "/admin/fleet").json()
        assert [e["asleep"] for e in view["experts"] if e["id"] == "vllm"][0]
        assert any(r.expert.id == "plain" for r in fleet.live.values())  # cannot sleep: still warm

        woken = _ask(client, "vllm")
        assert woken.headers["x-switchboard-cold-start"] == "true"
        assert woken.parse().choices[0].message.content.startswith("fake vllm answer")
        assert engine.process.pid == pid and not engine.is_asleep  # the same process, woken
        assert fleet.counters["wakes"] == 1
        stats = httpx.get(f"http://127.0.0.1:{engine.port}/stats").json()
        assert stats["num_sleeps"] == 1 and stats["num_wakes"] == 1 and stats["num_generations"] == 2

        _wait_for(lambda: engine.is_asleep, 15, "asleep again")
        _wait_for(lambda: engine.process is None, 15, "the asleep replica to be stopped after asleep_keepalive_s")
        http.close()
    db = create_engine(f"sqlite:///{tmp_path}/requests.db")
    with db.connect() as connection:
        counts = Counter(r.id for r in connection.execute(select(requests_table.c.id)))
    db.dispose()
    assert len(sent) == 3 and all(counts[i] == 1 for i in sent)
