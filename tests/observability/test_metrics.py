"""`/metrics` moves as the gateway serves requests: counters, histograms, tokens, cost, fleet gauges."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry

from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

from .conftest import scrape


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_as_requests_are_served(config):
    registry = CollectorRegistry()
    app = build_app(config, registry=registry)
    with serve_in_thread(app) as url:
        before = scrape(url)
        assert value(before, "switchboard_requests_total", expert="paid", outcome="ok") == 0
        assert value(before, "switchboard_replicas", expert="paid", hardware="l4", state="warm") == 1

        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        answers = [client.chat.completions.create(model="paid", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
                   for _ in range(3)]
        chunks = list(client.chat.completions.create(model="paid", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                                     stream=True, stream_options={"include_usage": True}))
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])

        after = scrape(url)
        assert value(after, "switchboard_requests_total", expert="paid", outcome="ok") == 4
        assert value(after, "switchboard_requests_total", expert="none", outcome="invalid") == 1
        assert value(after, "switchboard_request_duration_seconds_count", expert="paid", outcome="ok") == 4
        assert value(after, "switchboard_request_ttft_seconds_count", expert="paid", outcome="ok") == 1  # the streamed one
        tokens_in = sum(a.usage.prompt_tokens for a in answers) + chunks[-1].usage.prompt_tokens
        tokens_out = sum(a.usage.completion_tokens for a in answers) + chunks[-1].usage.completion_tokens
        assert value(after, "switchboard_tokens_total", expert="paid", direction="input") == tokens_in
        assert value(after, "switchboard_tokens_total", expert="paid", direction="output") == tokens_out
        usd = value(after, "switchboard_cost_usd_total", expert="paid")
        assert usd == pytest.approx((tokens_in * 2.0 + tokens_out * 8.0) / 1e6)
        assert value(after, "switchboard_queue_depth", expert="paid") == 0
        assert value(after, "switchboard_workers", hardware="h100") == 1
        # The pinned replica's start was a decision with a reason, and a measured cold start.
        assert value(after, "switchboard_cold_starts_total", expert="paid", hardware="l4") >= 1
        assert value(after, "switchboard_cold_start_duration_seconds_count", expert="paid", hardware="l4") >= 1
        assert any(name == "switchboard_decisions_total" and dict(labels)["action"] == "StartReplica"
                   for name, labels in after)


def test_two_apps_in_one_process_keep_their_own_metrics(config):
    first, second = build_app(config), build_app(config)
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b:
        httpx.post(url_a + "/v1/completions", json={"model": "paid", "prompt": "x", "max_tokens": 2}).raise_for_status()
        assert value(scrape(url_a), "switchboard_requests_total", expert="paid", outcome="ok") == 1
        assert value(scrape(url_b), "switchboard_requests_total", expert="paid", outcome="ok") == 0


def test_rejections_and_upstream_errors_have_their_outcome(config):
    app = build_app(config)
    with serve_in_thread(app) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"model": "paid", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6})
        assert r.status_code == 400
        samples = scrape(url)
        assert value(samples, "switchboard_requests_total", expert="none", outcome="invalid") == 1


def test_auto_requests_are_counted_by_chosen_expert_and_reason(config):
    app = build_app(config)  # no router loaded: the default chooser answers `auto` with the first expert
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert value(scrape(url), "switchboard_routes_total", expert="paid", reason="router") == 1
        with httpx.stream("GET", url + "/admin/events", timeout=10) as response:
            event = next(json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: "))
    assert [(r["expert"], r["reason"]) for r in event["routes"]] == [("paid", "default expert (no router loaded)")]
