"""Browsers calling the API from another origin (`gateway.cors_allow_origins`): the preflight is answered before
auth, the answer's `x-request-id` and `x-switchboard-*` headers are readable by the page, other origins are
refused, and nothing changes when no origin is configured. Judged by Debian's Chromium: a page on one port calls
the gateway on another with fetch, whole and streamed."""

from __future__ import annotations

import httpx
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.storage import database
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.store import create_key
from switchboard.testing.servers import serve_in_thread

CONFIG = """
experts:
  - id: small
    backend: {{kind: simulated, time_scale: 0}}
gateway: {{cors_allow_origins: [{origins}]}}
storage: {{url: "{db}"}}
{auth}
"""
PAGE = b"<!doctype html><title>an app on another origin</title>"


async def _page(scope, receive, send):
    """A web app's origin: one HTML page."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": PAGE})


def _gateway(tmp_path, origins: str, auth: bool = False):
    db = f"sqlite:///{tmp_path / 'g.db'}"
    secret = None
    if auth:
        engine = database.open_engine(db)
        database.migrate(engine)
        secret = create_key(engine, "web", "acme", KeyLimits())[1]
        engine.dispose()
    config = parse_config(CONFIG.format(origins=origins, db=db, auth="auth: {enabled: true}" if auth else ""))
    return build_app(config, environ={"SWITCHBOARD_ADMIN_KEY": "admin-" + "b" * 40}), secret


PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type"}


def test_preflight_before_auth_exposed_headers_and_other_origins(tmp_path):
    app, secret = _gateway(tmp_path, '"https://app.example.com"', auth=True)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as http:
        allowed = http.options("/v1/chat/completions", headers={"origin": "https://app.example.com", **PREFLIGHT})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        refused = http.options("/v1/chat/completions", headers={"origin": "https://evil.example.com", **PREFLIGHT})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        body = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        unkeyed = http.post("/v1/chat/completions", json=body, headers={"origin": "https://app.example.com"})
        assert unkeyed.status_code == 401 and unkeyed.headers["access-control-allow-origin"] == "https://app.example.com"
        answer = http.post("/v1/chat/completions", json=body, headers={"origin": "https://app.example.com", "authorization": f"Bearer {secret}"})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example.com"
        exposed = answer.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "x-switchboard-expert" in exposed


def test_without_origins_nothing_changes(tmp_path):
    app, _ = _gateway(tmp_path, "")
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as http:
        preflight = http.options("/v1/chat/completions", headers={"origin": "https://app.example.com", **PREFLIGHT})
        assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers
        answer = http.post("/v1/chat/completions", json={"model": "small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
                           headers={"origin": "https://app.example.com"})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


FETCH = """async ([url, key, stream]) => {
  const response = await fetch(url + "/v1/chat/completions", {method: "POST",
    headers: {"content-type": "application/json", "authorization": "Bearer " + key},
    body: JSON.stringify({model: "small", messages: [{role: "user", content: "hi"}], max_tokens: 5, stream})});
  const text = await response.text();
  return {status: response.status, requestId: response.headers.get("x-request-id"), expert: response.headers.get("x-switchboard-expert"), text};
}"""


@pytest.mark.browser
def test_a_page_on_another_origin_calls_the_api_with_fetch(browser, tmp_path):
    with serve_in_thread(_page) as page_url:
        app, secret = _gateway(tmp_path, f'"{page_url}"', auth=True)
        (tmp_path / "other").mkdir()
        other, _ = _gateway(tmp_path / "other", '"https://app.example.com"')
        with serve_in_thread(app) as url, serve_in_thread(other) as other_url:
            page = browser.new_page()
            try:
                page.goto(page_url)
                whole = page.evaluate(FETCH, [url, secret, False])
                assert whole["status"] == 200 and whole["requestId"].startswith("chatcmpl-") and whole["expert"] == "small"
                assert "[simulated small: 5 tokens]" in whole["text"]
                streamed = page.evaluate(FETCH, [url, secret, True])
                assert streamed["status"] == 200 and streamed["text"].rstrip().endswith("data: [DONE]")
                # A gateway that does not list this page's origin: the browser refuses the call.
                with pytest.raises(Exception, match="Failed to fetch"):
                    page.evaluate(FETCH, [other_url, "unused", False])
            finally:
                page.close()
