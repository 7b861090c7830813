"""The live control plane on real llama.cpp processes: zero → a request wakes a replica (and says so) →
load spreads over two replicas → idle → zero again."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

pytestmark = pytest.mark.llamacpp

CONFIG = """
experts:
  - id: smol
    backend: {kind: llamacpp, n_threads: 1}
    params_b: 0.135
    context_tokens: 1024
    warm_at_start: false
    ttft_slo_s: 30
control_plane:
  step_interval_s: 0.2
  policies:
    keepalive: {kind: fixed, idle_timeout_s: 3}
    autoscale: {min_replicas: 0, max_replicas: 2, upscale_delay_s: 0, downscale_delay_s: 2, target_utilization: 0.01}
    prewarm: {kind: none}
"""


def _states(url: str) -> list[str]:
    fleet = httpx.get(url + "/admin/fleet").json()
    return [r["state"] for r in fleet["experts"][0]["replicas"]]


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.1)


def test_scale_from_zero_spread_and_back_to_zero():
    app = build_app(parse_config(CONFIG))
    with serve_in_thread(app) as url:
        assert _states(url) == []  # nothing runs before the first request

        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
        )
        assert raw.headers["x-switchboard-cold-start"] == "true"
        assert raw.parse().choices[0].message.content
        # The request's own replica is warm; with target_utilization 0.01 the autoscaler may already want a second
        # for its ~35 prompt tokens (counted by the GGUF's template and vocabulary), within max_replicas. That one
        # may have been started first (a lower id, listed first) and still be loading: found by its id, not its place.
        replicas = {r["replica_id"]: r["state"] for r in httpx.get(url + "/admin/fleet").json()["experts"][0]["replicas"]}
        assert replicas.get(raw.headers["x-switchboard-replica"]) == "warm" and 1 <= len(replicas) <= 2, replicas

        async def burst() -> list[str]:
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as aclient:
                async def one(i: int) -> str:
                    r = await aclient.chat.completions.with_raw_response.create(
                        model="smol", messages=[{"role": "user", "content": f"Count to {i}"}], max_tokens=24
                    )
                    return r.headers["x-switchboard-replica"]
                return await asyncio.gather(*(one(i) for i in range(6)))

        replicas_used = asyncio.run(burst())
        assert len(set(replicas_used)) == 2, f"load did not spread: {replicas_used}"

        # Idle past the keep-alive window: every replica goes away.
        _wait_for(lambda: _states(url) == [], 30, "scale to zero after the idle window")
        fleet = httpx.get(url + "/admin/fleet").json()
        transitions = fleet["counters"]["transitions"]
        assert transitions.get("cold->starting") == 2 and transitions.get("starting->warm") == 2
        assert any(d["action"] == "StopReplica" or d["action"] == "DrainReplica" for d in fleet["decisions"])

        raw = client.chat.completions.with_raw_response.create(model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert raw.headers["x-switchboard-cold-start"] == "true"


def test_a_killed_worker_is_noticed_and_replaced():
    config = CONFIG.replace("warm_at_start: false", "warm_at_start: true")
    app = build_app(parse_config(config))
    with serve_in_thread(app) as url:
        fleet = app.state.gateway.fleet
        _wait_for(lambda: _states(url) == ["warm"], 60, "the first replica to be warm")
        (victim,) = fleet.live.values()
        victim.engine.process.kill()
        _wait_for(lambda: "warm" not in _states(url), 10, "the dead replica to leave the fleet")
        stops = [d for d in httpx.get(url + "/admin/fleet").json()["decisions"] if d["action"] == "StopReplica"]
        assert stops and stops[-1]["code"] == "engine-lost"
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert raw.headers["x-switchboard-replica"] != victim.replica_id
