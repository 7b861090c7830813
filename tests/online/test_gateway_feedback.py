"""Feedback through the real gateway (uvicorn on a free port, the official openai client, simulated experts, the
packaged router, auth on): a tenant's scores move its own routing and no one else's, survive a restart, and the
endpoint refuses unauthenticated, foreign and oversized feedback."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import httpx
import numpy as np
import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.online import OnlineLearner
from switchboard.router import load_default_router
from switchboard.router.chooser import RouterChooser
from switchboard.storage import database
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.store import create_key
from switchboard.testing.servers import serve_in_thread

ADMIN_KEY = "admin-" + "y" * 40
PROMPT = "Write a Python function that checks whether a string is a palindrome."
CONFIG = """
experts:
  - {{id: gemma-2-9b-it, backend: {{kind: simulated, time_scale: 0}}, usd_per_mtok_input: 0.1, usd_per_mtok_output: 0.1}}
  - {{id: qwen2.5-7b-instruct, backend: {{kind: simulated, time_scale: 0}}, usd_per_mtok_input: 0.2, usd_per_mtok_output: 0.2}}
  - {{id: llama-3.1-nemotron-51b-instruct, backend: {{kind: simulated, time_scale: 0}}, usd_per_mtok_input: 0.9, usd_per_mtok_output: 0.9}}
storage: {{url: "{url}", flush_interval_s: 0.05}}
auth: {{enabled: true, refresh_interval_s: 0.1}}
router: {{online: {{explore_fraction: {explore_fraction}, explore_min_evidence: 3.0}}}}
"""


@pytest.fixture(scope="module")
def router():
    return load_default_router()


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'requests.db'}"


def new_key(url: str, tenant: str) -> str:
    engine = database.open_engine(url)
    database.migrate(engine)
    _, secret = create_key(engine, f"{tenant}-app", tenant, KeyLimits())
    engine.dispose()
    return secret


def serve(url: str, router, explore_fraction: float = 0.0):
    config = parse_config(CONFIG.format(url=url, explore_fraction=explore_fraction))
    online = OnlineLearner(router, config.router.online, np.random.default_rng(0))
    app = build_app(config, chooser=RouterChooser(router, "gemma-2-9b-it", online=online), environ={"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY})
    return serve_in_thread(app), online


def ask(base: str, secret: str) -> tuple[str, str, dict]:
    client = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": PROMPT}], max_tokens=4)
    return raw.headers["x-switchboard-expert"], raw.headers["x-request-id"], json.loads(raw.headers["x-switchboard-route"])


def feedback(base: str, secret: str | None, request_id: str, score: float) -> httpx.Response:
    headers = {} if secret is None else {"authorization": f"Bearer {secret}"}
    return httpx.post(base + "/v1/feedback", headers=headers, json={"request_id": request_id, "score": score})


def test_feedback_moves_only_its_tenants_routing_and_survives_a_restart(db_url, router):
    acme, globex = new_key(db_url, "acme"), new_key(db_url, "globex")
    server, online = serve(db_url, router)
    with server as base:
        first, _, _ = ask(base, acme)
        assert ask(base, globex)[0] == first
        for _ in range(60):  # the expert the router likes fails every time for acme
            expert, request_id, route = ask(base, acme)
            if expert != first:
                break
            assert feedback(base, acme, request_id, 0.0).status_code == 201
        assert expert != first and route["online"]["feedback_events"] > 0
        assert ask(base, globex)[0] == first and online.num_events("globex") == 0
        learned = online.num_events("acme")
    server, restored = serve(db_url, router)
    with server as base:
        deadline = time.monotonic() + 30
        while restored.num_events("acme") < learned:  # the restore runs in the background after start
            assert time.monotonic() < deadline, "corrections were not restored from the log"
            time.sleep(0.05)
        assert restored.num_events("acme") == learned and restored.num_events("globex") == 0
        assert ask(base, acme)[0] != first and ask(base, globex)[0] == first


def test_a_streamed_answer_is_in_the_log_before_its_client_sees_the_end(db_url, router, slow_lease_release):
    """A client that scores a streamed answer as soon as its stream ends must find the request logged (201, and
    learned), however long the gateway then takes to wind the stream down — here its replica lease's release is
    held 0.5 s."""
    acme = new_key(db_url, "acme")
    server, online = serve(db_url, router)
    with server as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=acme, max_retries=0, timeout=30)
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": PROMPT}], max_tokens=4, stream=True)
            chunks = list(raw.parse())
            assert chunks[-1].choices[0].finish_reason is not None
            assert feedback(base, acme, raw.headers["x-request-id"], 1.0).status_code == 201
        assert online.num_events("acme") == 3


def test_feedback_needs_the_callers_own_request_and_a_small_body(db_url, router):
    acme, globex = new_key(db_url, "acme"), new_key(db_url, "globex")
    server, online = serve(db_url, router)
    with server as base:
        _, request_id, _ = ask(base, acme)
        assert feedback(base, None, request_id, 1.0).status_code == 401
        assert feedback(base, "sk-sb-" + "Q" * 43, request_id, 1.0).status_code == 401
        assert feedback(base, ADMIN_KEY, request_id, 1.0).status_code == 403
        foreign = feedback(base, globex, request_id, 0.0)
        assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "request_not_found"
        assert online.num_events("globex") == 0 and online.num_events("acme") == 0
        # Streamed (chunked) past 64 KiB: cut off there.
        chunks = (b'{"request_id": "' + b"x" * 8192 for _ in range(16))
        streamed = httpx.post(base + "/v1/feedback", headers={"authorization": f"Bearer {acme}"}, content=chunks)
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "body_too_large"
        # Declared over the limit: refused before a byte of the body is sent.
        status_line = _declared_only(base, acme, 10 * 1024 * 1024)
        assert status_line.startswith("HTTP/1.1 413")
        assert feedback(base, acme, request_id, 1.0).status_code == 201 and online.num_events("acme") == 1


def test_exploration_is_bounded_named_in_the_route_header_and_only_for_the_tenant_with_feedback(db_url, router):
    acme, globex = new_key(db_url, "acme"), new_key(db_url, "globex")
    server, online = serve(db_url, router, explore_fraction=0.5)
    with server as base:
        first, request_id, route = ask(base, acme)
        assert "online" not in route  # no feedback yet: the router's own decision
        deadline = time.monotonic() + 30
        while online.num_events("acme") == 0:  # stored at once; learned once the request's row is written
            assert time.monotonic() < deadline, "the feedback was never learned"
            assert feedback(base, acme, request_id, 1.0).status_code == 201
            time.sleep(0.05)
        explored = set()
        for n in range(1, 9):
            expert, _, route = ask(base, acme)
            info = route["online"]
            num_explored, num_decisions = map(int, info["explored_decisions"].split("/"))
            assert info["explore_fraction"] == 0.5 and num_decisions == n and num_explored <= 0.5 * n
            if "explored_expert" in info:
                assert info["explored"] and info["explored_expert"] == expert != first
                explored.add(expert)
            theirs, _, their_route = ask(base, globex)
            assert theirs == first and "online" not in their_route
        assert explored  # the experts the router passed over were tried, within the bound


def _declared_only(base: str, secret: str, num_bytes: int) -> str:
    """Sends only the headers of a POST declaring `num_bytes` of body; returns the status line it gets back."""
    url = urlparse(base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall((f"POST /v1/feedback HTTP/1.1\r\nhost: {url.hostname}\r\nauthorization: Bearer {secret}\r\n"
                      f"content-type: application/json\r\ncontent-length: {num_bytes}\r\n\r\n").encode())
        return sock.recv(4096).decode("latin-1").splitlines()[0]
