"""The dashboard in Debian's headless Chromium: loads cleanly, shows the configured experts, follows requests
and a replica going cold, and the SSE feed it reads carries the fleet and the metrics."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

from switchboard.gateway.app import build_app
from switchboard.testing.browser import record_errors
from switchboard.testing.servers import serve_in_thread

pytestmark = pytest.mark.browser


@pytest.fixture
def gateway(config):
    with serve_in_thread(build_app(config)) as url:
        yield url


@pytest.fixture
def page(browser, gateway):
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    errors = record_errors(page)
    page.goto(gateway + "/dashboard")
    yield page
    page.close()
    assert errors == [], f"the dashboard logged errors: {errors}"


def expert_row(page, expert_id: str):
    return page.locator(f'#experts tbody tr[data-expert="{expert_id}"]')


def test_dashboard_loads_and_shows_the_configured_experts(page):
    page.wait_for_selector("body[data-updates]")
    assert page.locator("#conn").get_attribute("data-state") == "live"
    assert page.locator("#experts tbody tr").evaluate_all("rows => rows.map(r => r.dataset.expert)") == ["paid", "spare"]
    # Workers are grouped by hardware kind, each with its replicas.
    assert page.locator('.kind[data-hardware="l4"] .worker[data-worker="gpu-a"]').count() == 1
    assert page.locator('.kind[data-hardware="h100"] .worker[data-worker="gpu-b"]').count() == 1
    page.wait_for_selector('.replica[data-expert="paid"][data-state="warm"]')
    assert "StartReplica" in page.locator("#decisions").inner_text()
    assert page.locator("#devices-panel").is_hidden()  # no worker declares devices (tests/dashboard has some)


def test_dashboard_updates_when_requests_arrive(page, gateway):
    page.wait_for_selector("body[data-updates]")
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0)
    for _ in range(5):
        client.chat.completions.create(model="paid", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    list(client.chat.completions.create(model="paid", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True))
    ok_cell = expert_row(page, "paid").locator("td.ok")
    page.wait_for_function("() => document.querySelector('#experts tr[data-expert=\"paid\"] td.ok').textContent === '6'", timeout=10_000)
    assert ok_cell.inner_text() == "6"
    assert page.locator("#kpi-requests").inner_text() == "6"
    assert re.match(r"\$0\.0\d+", page.locator("#kpi-usd").inner_text())
    assert expert_row(page, "paid").locator("td.usd").inner_text() != "$0"
    assert "TTFT p50" in page.locator("#kpi-ttft").inner_text()  # the streamed answer gave a first-token time
    assert "ms" in page.locator("#kpi-latency").inner_text()


def test_dashboard_shows_a_replica_going_cold_and_waking(page, gateway):
    # `spare` has a 1 s keep-alive and no pinned replica: idle, it scales to zero.
    page.wait_for_selector("body[data-updates]")
    page.wait_for_function("() => !document.querySelector('.replica[data-expert=\"spare\"]')", timeout=20_000)
    assert "cold" in expert_row(page, "spare").locator("td.states").inner_text()
    assert re.search(r"(StopReplica|DrainReplica) spare", page.locator("#decisions").inner_text())
    assert page.locator('.worker[data-worker="gpu-b"] .empty').count() == 1

    raw = httpx.post(gateway + "/v1/completions", json={"model": "spare", "prompt": "wake up", "max_tokens": 2})
    assert raw.headers["x-switchboard-cold-start"] == "true"
    page.wait_for_selector('.replica[data-expert="spare"]', timeout=10_000)
    page.wait_for_function("() => document.querySelector('#experts tr[data-expert=\"spare\"] td.ok').textContent === '1'", timeout=10_000)


def test_event_feed_carries_fleet_and_metrics(gateway):
    with httpx.stream("GET", gateway + "/admin/events", params={"interval_s": 0.2}, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[len("data: "):])
                break
    assert [e["id"] for e in event["fleet"]["experts"]] == ["paid", "spare"]
    assert set(event["metrics"]) >= {"experts", "totals", "latency_s", "ttft_s"}
    assert all("memory_used_gb" in w for w in event["fleet"]["workers"])


def test_with_auth_on_the_dashboard_asks_for_the_admin_key_and_sends_it(browser, tmp_path):
    from switchboard.config import parse_config
    from switchboard.tenants.keys import KeyLimits
    from switchboard.tenants.store import create_key

    from .conftest import CONFIG

    admin_key = "admin-" + "d" * 40
    url = f"sqlite:///{tmp_path / 'r.db'}"
    config = parse_config(CONFIG + f'storage: {{url: "{url}"}}\nauth: {{enabled: true}}\n')
    app = build_app(config, environ={"SWITCHBOARD_ADMIN_KEY": admin_key})
    with serve_in_thread(app) as gateway:
        _, api_key = create_key(app.state.tenants.registry.engine, "not-admin", "t", KeyLimits())
        page = browser.new_page()
        errors = record_errors(page)
        page.goto(gateway + "/dashboard")
        page.wait_for_selector("#auth:not([hidden])")
        assert page.locator("#conn").get_attribute("data-state") == "lost"
        page.fill("#auth-key", api_key)  # an API key is not the admin key: asked again
        page.click("#auth button")
        page.wait_for_function("() => document.querySelector('#auth-message').textContent.startsWith('That key was not accepted')")
        page.fill("#auth-key", admin_key)
        page.click("#auth button")
        page.wait_for_selector("body[data-updates]")
        assert page.locator("#conn").get_attribute("data-state") == "live" and page.locator("#auth").is_hidden()
        assert page.locator("#experts tbody tr").evaluate_all("rows => rows.map(r => r.dataset.expert)") == ["paid", "spare"]
        page.close()
    # The browser reports each refused /admin/events load as a console error; nothing else may be logged.
    assert [e for e in errors if "status of 401" not in e and "status of 403" not in e] == []
