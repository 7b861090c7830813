"""Budgets under concurrency, through the real gateway: 64 requests of one key arrive together, and the key's
daily budget is exceeded by less than one request's estimated cost (each admitted request holds its estimate
until it settles; before, all 64 were admitted against a spend of zero)."""

from __future__ import annotations

import asyncio
import json

import openai
from sqlalchemy import create_engine, text

from switchboard.config import parse_config
from switchboard.gateway import requests as rq
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

from .test_gateway_keys import ADMIN_KEY, new_key

NUM_CONCURRENT = 64
MAX_TOKENS = 40
CONFIG = """
experts:
  - id: metered
    backend: {{kind: simulated, time_scale: 1.0, default_output_tokens: 4096}}
    params_b: 1
    warm_at_start: true
    usd_per_mtok_input: 100.0
    usd_per_mtok_output: 200.0
storage: {{url: "{url}", flush_interval_s: 0.05}}
auth: {{enabled: true, refresh_interval_s: 0.1}}
"""


def test_64_concurrent_requests_overshoot_the_budget_by_less_than_one_estimate(db_url):
    app = build_app(parse_config(CONFIG.format(url=db_url)), environ={"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY})
    _, warmup = new_key(db_url, "warm-up")
    gate = app.state.tenants
    with serve_in_thread(app) as base:
        messages = [{"role": "user", "content": "hi"}]
        openai.OpenAI(base_url=base + "/v1", api_key=warmup, max_retries=0).chat.completions.create(
            model="metered", messages=messages, max_tokens=1)  # the replica is warm: the 64 below overlap in full
        estimate = gate.usd_estimate("metered", prompt_tokens(messages), MAX_TOKENS)
        budget = 5.5 * estimate
        key_id, secret = new_key(db_url, "budget", usd_per_day=budget)

        async def burst() -> list:
            async with openai.AsyncOpenAI(base_url=base + "/v1", api_key=secret, max_retries=0, timeout=120) as client:
                await asyncio.sleep(0.3)  # the key table is re-read every 0.1 s
                calls = [client.chat.completions.create(model="metered", messages=messages, max_tokens=MAX_TOKENS)
                         for _ in range(NUM_CONCURRENT)]
                return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(burst())
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
    assert len(served) + len(refused) == NUM_CONCURRENT, [o for o in outcomes if isinstance(o, BaseException) and o not in refused]
    assert all(o.status_code == 402 and o.code == "usd_per_day_exceeded" for o in refused)
    assert all(o.usage.completion_tokens == MAX_TOKENS for o in served)  # each cost its full estimate
    engine = create_engine(db_url)
    with engine.connect() as connection:
        spent = connection.execute(text("SELECT COALESCE(SUM(usd_cost), 0) FROM requests WHERE key_id = :k"), {"k": key_id}).scalar()
    engine.dispose()
    # Holds admit requests while spend + holds < budget: 6 here (5.5 estimates), so the spend is 6 estimates.
    assert len(served) == 6
    assert budget <= spent < budget + estimate * 1.0001


def prompt_tokens(messages) -> int:
    """The prompt estimate the gateway makes for `messages` (what the hold is computed from)."""
    parsed, _ = rq.parse_chat(json.dumps({"model": "metered", "messages": messages}).encode())
    return rq.estimate_tokens(rq.chat_prompt_text(parsed), len(parsed.messages))
