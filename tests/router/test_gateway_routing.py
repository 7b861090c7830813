"""`"model": "auto"` through the real gateway with the packaged default router, driven by the openai client."""

from __future__ import annotations

import json

import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.router import load_default_router
from switchboard.router.chooser import RouterChooser
from switchboard.testing.servers import serve_in_thread

CONFIG = """
experts:
  - id: local-small
    backend: {kind: simulated, time_scale: 0}
  - id: gemma-2-9b-it
    backend: {kind: simulated, time_scale: 0}
    usd_per_mtok_input: 0.1
    usd_per_mtok_output: 0.1
  - id: llama-3.1-8b-instruct
    backend: {kind: simulated, time_scale: 0}
    usd_per_mtok_input: 0.2
    usd_per_mtok_output: 0.2
  - id: llama-3.1-nemotron-51b-instruct
    backend: {kind: simulated, time_scale: 0}
    usd_per_mtok_input: 0.9
    usd_per_mtok_output: 0.9
defaults:
  expert: local-small
"""
ROUTED = {"gemma-2-9b-it", "llama-3.1-8b-instruct", "llama-3.1-nemotron-51b-instruct"}


@pytest.fixture(scope="module")
def router():
    return load_default_router()


@pytest.fixture(scope="module")
def client(router):
    config = parse_config(CONFIG)
    app = build_app(config, chooser=RouterChooser(router, config.default_expert_id))
    with serve_in_thread(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


def ask(client, routing=None, content="What is 12 * 7? Answer with a number."):
    extra = {} if routing is None else {"routing": routing}
    return client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": content}], max_tokens=4, extra_body=extra
    )


def test_auto_routes_among_known_experts_and_reports_why(client):
    raw = ask(client)
    expert = raw.headers["x-switchboard-expert"]
    route = json.loads(raw.headers["x-switchboard-route"])
    assert expert in ROUTED
    assert 0 <= route["predicted_quality"] <= 1 and route["usd_per_mtok"] in (0.1, 0.2, 0.9)
    assert route["strategy"] and route["reason"]
    assert raw.parse().choices[0].message.content


def test_routing_object_is_honoured(client):
    assert ask(client, {"max_usd_per_mtok": 0.15}).headers["x-switchboard-expert"] == "gemma-2-9b-it"
    assert ask(client, {"cost_weight": 100}).headers["x-switchboard-expert"] == "gemma-2-9b-it"
    only = ask(client, {"experts": ["llama-3.1-nemotron-51b-instruct"]})
    assert only.headers["x-switchboard-expert"] == "llama-3.1-nemotron-51b-instruct"
    with pytest.raises(openai.BadRequestError, match="constraints"):
        ask(client, {"min_quality": 1.0, "max_usd_per_mtok": 0.1})


def test_unknown_experts_fall_back_to_the_default(router):
    config = parse_config("experts:\n  - id: only-local\n    backend: {kind: simulated, time_scale: 0}\n")
    chooser = RouterChooser(router, config.default_expert_id)
    choice = chooser.choose("hello", None, config.experts)
    assert choice.expert_id == "only-local"


def test_auto_limited_to_experts_the_router_does_not_know_uses_the_default_rule(client):
    # local-small is served but not in the router's training data: allowed alone, it answers (not a 400).
    raw = ask(client, {"experts": ["local-small"]})
    assert raw.headers["x-switchboard-expert"] == "local-small"
    assert json.loads(raw.headers["x-switchboard-route"])["reason"].startswith("the router knows none of the candidates")


def test_auto_without_routing_uses_the_balanced_preset_and_objectives_set_lambda(client):
    route = json.loads(ask(client).headers["x-switchboard-route"])
    assert route["cost_weight"] == 0.025 and route["cost_weight_from"] == "default:balanced"
    assert route["predicted_usd"] > 0
    quality = json.loads(ask(client, {"objective": "quality"}).headers["x-switchboard-route"])
    assert quality["cost_weight"] == 0.0 and quality["cost_weight_from"] == "objective:quality"
    explicit = json.loads(ask(client, {"objective": "cost", "cost_weight": 0.5}).headers["x-switchboard-route"])
    assert explicit["cost_weight"] == 0.5 and explicit["cost_weight_from"] == "request"
    with pytest.raises(openai.BadRequestError, match="objective"):
        ask(client, {"objective": "cheapest"})


def test_configured_usd_weight_reaches_the_router_and_fleet_routing(router):
    """`control_plane.policies.routing.usd_weight` used to be dead (the chooser always sent 0.0)."""
    from switchboard.router.chooser import configured_usd_weight

    config = parse_config(CONFIG + "control_plane:\n  policies:\n    routing: {usd_weight: 100.0}\n")
    chooser = RouterChooser(router, config.default_expert_id, configured_usd_weight(config.control_plane.policies))
    choice = chooser.choose("Prove that there are infinitely many primes.", None, config.experts)
    assert choice.expert_id == "gemma-2-9b-it" and choice.cost_weight == 100.0
    assert choice.route_info["cost_weight_from"] == "config"
    assert configured_usd_weight(parse_config(CONFIG).control_plane.policies) is None
