"""Cluster-wide key limits on a real local Ray cluster: three gateways (this process and two `switchboard serve
--ray` processes) share one control actor, which counts one key's requests and spend for all of them. Run with
`pytest -m ray tests/cluster` (docs/ray.md, docs/tenants.md)."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from sqlalchemy import create_engine, text

from switchboard.config import parse_config
from switchboard.gateway import requests as rq
from switchboard.gateway.app import build_app
from switchboard.storage import database
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.store import create_key
from switchboard.testing.servers import serve_in_process, serve_in_thread

pytestmark = [pytest.mark.ray]

ADMIN_KEY = "admin-" + "y" * 40
RPM = 600
NUM_PER_GATEWAY = 240  # 720 in all: each gateway alone would grant its 240 (under its own 600)
NUM_CONCURRENT = 64
MAX_TOKENS = 40
MESSAGES = [{"role": "user", "content": "hi"}]


def limits_config(address: str, db_url: str):
    # A window far longer than the test: every request counts against the same 600, however slow the machine.
    return parse_config(f"""
cluster: {{kind: ray, address: "{address}", namespace: switchboard-limits-test, control_actor: switchboard-limits,
           inventory_interval_s: 0.5}}
experts:
  - id: metered
    backend: {{kind: simulated, hardware: l4, time_scale: 0.2, default_output_tokens: 4096}}
    params_b: 1
    warm_at_start: true
    usd_per_mtok_input: 100.0
    usd_per_mtok_output: 200.0
router: {{enabled: false}}
storage: {{url: "{db_url}", flush_interval_s: 0.05}}
auth: {{enabled: true, refresh_interval_s: 0.1, rate_window_s: 3600}}
control_plane: {{step_interval_s: 0.5, startup_wait_s: 60}}
""")


def new_key(db_url: str, name: str, **limits) -> tuple[str, str]:
    engine = database.open_engine(db_url)
    database.migrate(engine)
    key, secret = create_key(engine, name, "acme", KeyLimits(**limits))
    engine.dispose()
    return key.key_id, secret


def prompt_tokens() -> int:
    parsed, _ = rq.parse_chat(json.dumps({"model": "metered", "messages": MESSAGES}).encode())
    return rq.estimate_tokens(rq.chat_prompt_text(parsed), len(parsed.messages))


async def send(urls: list[str], secret: str, num_requests: int, concurrency: int, max_tokens: int) -> list:
    """`num_requests` requests spread evenly over the gateways, all at once (at most `concurrency` in flight per
    gateway); returns each outcome: the completion or the API error."""
    async def one(client: openai.AsyncOpenAI, limit: asyncio.Semaphore):
        async with limit:
            try:
                return await client.chat.completions.create(model="metered", messages=MESSAGES, max_tokens=max_tokens)
            except openai.APIStatusError as exc:
                return exc

    clients = [openai.AsyncOpenAI(base_url=url + "/v1", api_key=secret, max_retries=0, timeout=120) for url in urls]
    try:
        limits = [asyncio.Semaphore(concurrency) for _ in clients]
        return await asyncio.gather(*(one(clients[i % len(clients)], limits[i % len(clients)]) for i in range(num_requests)))
    finally:
        for client in clients:
            await client.close()


def test_three_gateways_grant_one_keys_limits_once(ray_cluster, tmp_path):
    from switchboard.cluster.ray_control import stop_control_actor

    _, address = ray_cluster
    db_url = f"sqlite:///{tmp_path / 'switchboard.db'}"
    config = limits_config(address, db_url)
    _, rpm_secret = new_key(db_url, "rpm", rpm=RPM)
    app = build_app(config, environ={"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY})
    estimate = app.state.tenants.usd_estimate("metered", prompt_tokens(), MAX_TOKENS)
    budget_id, budget_secret = new_key(db_url, "budget", usd_per_day=5.5 * estimate)
    env = {"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY}
    try:
        with serve_in_thread(app, startup_timeout_s=120) as first, \
                serve_in_process(config, tmp_path, "--ray", address, env=env) as (second, _), \
                serve_in_process(config, tmp_path, "--ray", address, env=env) as (third, _):
            urls = [first, second, third]
            outcomes = asyncio.run(send(urls, rpm_secret, 3 * NUM_PER_GATEWAY, 8, 1))
            granted = [o for o in outcomes if not isinstance(o, openai.APIStatusError)]
            refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
            assert all(o.status_code == 429 and o.code == "rpm_exceeded" for o in refused), {(o.status_code, o.code) for o in refused}
            assert len(granted) == RPM  # not 3 x 600: one count for the cluster

            # 64 at once across the three gateways: the budget's holds are shared too.
            outcomes = asyncio.run(send(urls, budget_secret, NUM_CONCURRENT, NUM_CONCURRENT, MAX_TOKENS))
            served = [o for o in outcomes if not isinstance(o, openai.APIStatusError)]
            assert all(o.status_code == 402 and o.code == "usd_per_day_exceeded" for o in outcomes if o not in served)
            assert all(o.usage.completion_tokens == MAX_TOKENS for o in served)  # each cost its whole estimate
            assert len(served) == 6  # admitted while spend + holds < 5.5 estimates, wherever they arrived
    finally:
        stop_control_actor(config.cluster)
    engine = create_engine(db_url)
    with engine.connect() as connection:
        spent = connection.execute(text("SELECT COALESCE(SUM(usd_cost), 0) FROM requests WHERE key_id = :k"), {"k": budget_id}).scalar()
    engine.dispose()
    assert 5.5 * estimate <= spent < 5.5 * estimate + estimate * 1.0001
