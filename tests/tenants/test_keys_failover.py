"""API keys and failover together: a request that fails over is answered (not a bare 500), its log row names
the expert that answered and why, and the key is charged that expert's price."""

from __future__ import annotations

import json
import time

import openai
from sqlalchemy import create_engine, text

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.storage import database
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.store import create_key
from switchboard.testing.servers import serve_in_thread
from switchboard.testing.upstream import MockUpstream

ADMIN_KEY = "admin-" + "z" * 40


def test_a_keyed_request_that_fails_over_is_answered_and_logged_under_the_fallback(tmp_path):
    db = f"sqlite:///{tmp_path / 'requests.db'}"
    engine = database.open_engine(db)
    database.migrate(engine)
    key, secret = create_key(engine, "app", "acme", KeyLimits(rpm=100))
    engine.dispose()
    with serve_in_thread(MockUpstream()) as upstream:
        config = parse_config(f"""
experts:
  - id: broken
    backend: {{kind: openai, base_url: "{upstream}/v1", model: fail-500}}
    fallbacks: [cheap]
  - id: cheap
    backend: {{kind: simulated, time_scale: 0}}
    usd_per_mtok_input: 1.0
    usd_per_mtok_output: 2.0
failover: {{backoff_base_s: 0.001}}
storage: {{url: "{db}", flush_interval_s: 0.05}}
auth: {{enabled: true, refresh_interval_s: 0.1}}
""")
        with serve_in_thread(build_app(config, environ={"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY})) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
            raw = client.chat.completions.with_raw_response.create(model="broken", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
            assert raw.headers["x-switchboard-expert"] == "cheap"
            assert [f["expert"] for f in json.loads(raw.headers["x-switchboard-failover"])] == ["broken", "broken"]
            request_id = raw.headers["x-request-id"]
            engine = create_engine(db)
            deadline = time.monotonic() + 10
            row = None
            while row is None and time.monotonic() < deadline:
                with engine.connect() as connection:
                    row = connection.execute(text("SELECT key_id, expert, routing_reason, usd_cost FROM requests WHERE id = :id"), {"id": request_id}).first()
                time.sleep(0.05)
            engine.dispose()
    assert row is not None and row.key_id == key.key_id and row.expert == "cheap"
    assert [f["expert"] for f in json.loads(row.routing_reason)["failover"]] == ["broken", "broken"]
    assert row.usd_cost > 0  # charged at the fallback's price
