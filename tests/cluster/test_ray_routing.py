"""`model: auto` on a real local Ray cluster: the gateway makes the fleet-aware choice itself, on the view the
control actor pushes (no call to it), and the wake-up that choice decides reaches the control actor in a load
report, which starts the cold expert. Run with `pytest -m ray tests/cluster` (docs/ray.md)."""

from __future__ import annotations

import json

import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.gateway.choosing import ExpertChoice
from switchboard.testing.fleet_view import fleet_view, replicas_of, wait_for
from switchboard.testing.servers import serve_in_thread

pytestmark = [pytest.mark.ray]


def auto_config(address: str):
    return parse_config(f"""
cluster: {{kind: ray, address: "{address}", namespace: switchboard-auto-test, control_actor: switchboard-auto,
           inventory_interval_s: 0.5}}
experts:
  - id: strong
    backend: {{kind: simulated, hardware: l4, time_scale: 0.02}}
    params_b: 8
    warm_at_start: false
  - id: decent
    backend: {{kind: simulated, hardware: l4, time_scale: 0.02}}
    params_b: 1
router: {{enabled: false}}
storage: {{enabled: false}}
control_plane: {{step_interval_s: 0.5, startup_wait_s: 60}}
""")


class FixedPredictions:
    """A stand-in router with fixed predictions: `strong` is best, `decent` close behind."""

    blocking = False

    def choose(self, prompt_text, routing, candidates):
        return ExpertChoice("strong", reason="fixed predictions", candidates=(("strong", 0.70, 0.0), ("decent", 0.66, 0.0)))


def test_a_gateway_routes_auto_itself_and_the_expert_it_wakes_is_started(ray_cluster):
    from switchboard.cluster.ray_control import stop_control_actor

    _, address = ray_cluster
    config = auto_config(address)
    app = build_app(config, chooser=FixedPredictions())
    try:
        with serve_in_thread(app, startup_timeout_s=120) as url:
            wait_for(lambda: replicas_of(fleet_view(url), "decent"), 60, "the warm-at-start expert to be warm")
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)

            def ask_auto():
                raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
                return raw.headers["x-switchboard-expert"], json.loads(raw.headers["x-switchboard-route"])

            expert_id, route = ask_auto()
            assert expert_id == "decent"  # a warm expert close in quality answers while the preferred one wakes
            assert route["fleet"] == "cold-start-hidden" and route["waking"] == ["strong"]
            # Decided in the gateway; the control actor learnt of the wake-up from its report and starts it.
            wait_for(lambda: replicas_of(fleet_view(url), "strong"), 60, "the woken expert to be warm")
            assert any(d["action"] == "Route" and d["expert"] == "decent" for d in fleet_view(url)["decisions"])
            wait_for(lambda: ask_auto()[0] == "strong", 30, "auto to choose the expert once it is warm")
    finally:
        stop_control_actor(config.cluster)
