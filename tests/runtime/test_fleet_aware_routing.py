"""Fleet-aware routing live: while the expert quality prefers is cold, a warm one close in quality answers and
the cold one is woken in the background; once it is warm, it answers."""

from __future__ import annotations

import json
import time

import httpx
import openai

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.gateway.choosing import ExpertChoice
from switchboard.testing.servers import serve_in_thread

CONFIG = """
experts:
  - id: strong
    backend: {kind: simulated, hardware: h100, time_scale: 0.02}
    params_b: 70
    warm_at_start: false
  - id: decent
    backend: {kind: simulated, hardware: l4, time_scale: 0.02}
    params_b: 8
control_plane:
  step_interval_s: 0.1
"""


class FixedPredictions:
    """A stand-in router with fixed predictions: `strong` is best, `decent` close behind."""

    blocking = False

    def choose(self, prompt_text, routing, candidates):
        return ExpertChoice("strong", reason="fixed predictions", candidates=(("strong", 0.70, 0.0), ("decent", 0.66, 0.0)))


def _wait_warm(url: str, expert_id: str, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        experts = {e["id"]: e for e in httpx.get(url + "/admin/fleet").json()["experts"]}
        if [r["state"] for r in experts[expert_id]["replicas"]] == ["warm"]:
            return
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_cold_start_hiding_then_the_woken_expert_serves():
    app = build_app(parse_config(CONFIG), chooser=FixedPredictions())
    with serve_in_thread(app) as url:
        _wait_warm(url, "decent", "the warm-at-start expert never came up")  # simulated starts don't hold start-up
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        route = json.loads(raw.headers["x-switchboard-route"])
        assert raw.headers["x-switchboard-expert"] == "decent"
        assert raw.headers["x-switchboard-cold-start"] == "false"
        assert route["fleet"] == "cold-start-hidden" and route["waking"] == ["strong"]

        _wait_warm(url, "strong", "the preferred expert was never woken")

        raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert raw.headers["x-switchboard-expert"] == "strong"
        assert json.loads(raw.headers["x-switchboard-route"])["fleet"] == "best-score"
