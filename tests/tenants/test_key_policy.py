"""A key's quality floor and cost ceiling through the real gateway with the packaged router and the openai
client: merged with the request's own routing constraints, checked for named models, and each of degrade,
queue and reject when no expert meets them (statically) or the one that does is not warm (dynamically).

Predicted qualities of the packaged router for PROMPT (`ensemble-format3-task`): llama-3.1-8b 0.359 (0.2 USD/Mtok),
nemotron-51b 0.349 (0.9), gemma-2-9b 0.204 (0.1); local-small is unknown to the router (quality unknown, free).
The floors below sit between them (`test_the_floors_sit_between_the_packaged_routers_predictions` says so first
when a new packaged router moves them).
"""

from __future__ import annotations

import json
import time

import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.router import load_default_router
from switchboard.router.chooser import RouterChooser
from switchboard.storage import database
from switchboard.tenants.keys import KeyLimits, OnViolation
from switchboard.tenants.store import create_key
from switchboard.testing.servers import serve_in_thread

PROMPT = "What is 12 * 7? Answer with a number."
ADMIN = {"SWITCHBOARD_ADMIN_KEY": "admin-" + "k" * 40}
CONFIG = """
experts:
  - id: local-small
    backend: {{kind: simulated, time_scale: 0}}
  - id: gemma-2-9b-it
    backend: {{kind: simulated, time_scale: 0}}
    usd_per_mtok_input: 0.1
    usd_per_mtok_output: 0.1
  - id: llama-3.1-8b-instruct
    backend: {{kind: simulated, time_scale: 0}}
    usd_per_mtok_input: 0.2
    usd_per_mtok_output: 0.2
    warm_at_start: {eight_b_warm}
  - id: llama-3.1-nemotron-51b-instruct
    backend: {{kind: simulated, time_scale: 0}}
    usd_per_mtok_input: 0.9
    usd_per_mtok_output: 0.9
defaults:
  expert: local-small
storage: {{url: "{url}", flush_interval_s: 0.05}}
auth: {{enabled: true, refresh_interval_s: 0.1}}
control_plane:
  policies:
    keepalive: {{kind: fixed, idle_timeout_s: 600}}
    prewarm: {{kind: none}}
"""


BOTH_MEET = 0.3  # llama-3.1-8b and nemotron-51b meet it, gemma-2-9b does not
ONLY_8B_MEETS = 0.354  # between nemotron-51b and llama-3.1-8b


@pytest.fixture(scope="module")
def router():
    return load_default_router()


def test_the_floors_sit_between_the_packaged_routers_predictions(router):
    quality = dict(zip(router.experts, router.predict_quality([PROMPT])[0]))
    assert quality["llama-3.1-8b-instruct"] > ONLY_8B_MEETS > quality["llama-3.1-nemotron-51b-instruct"] > BOTH_MEET
    assert BOTH_MEET > quality["gemma-2-9b-it"]


def make_keys(url: str, **policies: KeyLimits) -> dict[str, str]:
    engine = database.open_engine(url)
    database.migrate(engine)
    secrets = {name: create_key(engine, name, "t", limits)[1] for name, limits in policies.items()}
    engine.dispose()
    return secrets


def serve(url: str, router, eight_b_warm: bool = True):
    config = parse_config(CONFIG.format(url=url, eight_b_warm=str(eight_b_warm).lower()))
    return serve_in_thread(build_app(config, chooser=RouterChooser(router, config.default_expert_id), environ=ADMIN))


def ask(base: str, secret: str, model: str = "auto", routing: dict | None = None):
    client = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0, timeout=60)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=4, extra_body={"routing": routing} if routing else {})


def test_auto_honours_the_tighter_of_the_key_and_the_request(tmp_path, router):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    keys = make_keys(url, plain=KeyLimits(), ceiling=KeyLimits(usd_per_mtok_ceiling=0.15), floor=KeyLimits(quality_floor=BOTH_MEET))
    with serve(url, router) as base:
        assert ask(base, keys["plain"]).headers["x-switchboard-expert"] == "llama-3.1-8b-instruct"
        assert ask(base, keys["ceiling"]).headers["x-switchboard-expert"] == "gemma-2-9b-it"  # the key's ceiling
        # The request asks for a looser ceiling than the key's: the key's wins. A tighter one of its own: it wins.
        assert ask(base, keys["ceiling"], routing={"max_usd_per_mtok": 5}).headers["x-switchboard-expert"] == "gemma-2-9b-it"
        with pytest.raises(openai.BadRequestError) as err:
            ask(base, keys["ceiling"], routing={"max_usd_per_mtok": 0.05, "experts": ["gemma-2-9b-it"]})
        assert err.value.code == "no_expert_satisfies_routing"  # the request's own constraints: the usual 400
        raw = ask(base, keys["floor"], routing={"min_quality": 0.2})
        assert raw.headers["x-switchboard-expert"] == "llama-3.1-8b-instruct"
        assert json.loads(raw.headers["x-switchboard-route"])["predicted_quality"] >= BOTH_MEET
        assert "x-switchboard-key-policy" not in raw.headers


def test_no_compliant_expert_degrade_serves_the_closest_queue_and_reject_name_the_limit(tmp_path, router):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    keys = make_keys(url, **{p.value: KeyLimits(quality_floor=0.9, on_violation=p) for p in OnViolation},
                     cheap_degrade=KeyLimits(quality_floor=0.5, usd_per_mtok_ceiling=0.15, on_violation=OnViolation.DEGRADE))
    with serve(url, router) as base:
        raw = ask(base, keys["degrade"])
        assert raw.headers["x-switchboard-expert"] == "llama-3.1-8b-instruct"  # the highest predicted: the least below 0.9
        assert raw.headers["x-switchboard-key-policy"] == "degraded; violated=quality_floor; expert=llama-3.1-8b-instruct"
        assert json.loads(raw.headers["x-switchboard-route"])["key_policy"].startswith("degraded")
        # Floor 0.5 and ceiling 0.15: no expert meets the floor; gemma (0.1 USD/Mtok) at least meets the ceiling,
        # so it is closer than 8b (0.2), which misses both.
        raw = ask(base, keys["cheap_degrade"])
        assert raw.headers["x-switchboard-expert"] == "gemma-2-9b-it"
        assert raw.headers["x-switchboard-key-policy"] == "degraded; violated=quality_floor; expert=gemma-2-9b-it"
        for policy in ("reject", "queue"):
            with pytest.raises(openai.PermissionDeniedError) as err:
                ask(base, keys[policy])
            assert err.value.code == "key_quality_floor" and "quality floor 0.9" in err.value.message
            assert "llama-3.1-8b-instruct" in err.value.message  # the closest, so the caller knows what is possible
            assert err.value.response.headers["x-switchboard-limit"] == "quality_floor"
        assert "waiting cannot help" in err.value.message


def test_named_models_are_checked_and_unknown_quality_is_said(tmp_path, router):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    keys = make_keys(url, ceiling=KeyLimits(usd_per_mtok_ceiling=0.15), ceiling_degrade=KeyLimits(usd_per_mtok_ceiling=0.15, on_violation=OnViolation.DEGRADE),
                     floor=KeyLimits(quality_floor=BOTH_MEET))
    with serve(url, router) as base:
        with pytest.raises(openai.PermissionDeniedError) as err:
            ask(base, keys["ceiling"], model="llama-3.1-nemotron-51b-instruct")
        assert err.value.code == "key_cost_ceiling" and "cost ceiling 0.15 USD/Mtok" in err.value.message
        raw = ask(base, keys["ceiling_degrade"], model="llama-3.1-nemotron-51b-instruct")  # served as named, and said so
        assert raw.headers["x-switchboard-expert"] == "llama-3.1-nemotron-51b-instruct"
        assert raw.headers["x-switchboard-key-policy"].startswith("degraded; violated=usd_per_mtok_ceiling")
        assert "x-switchboard-key-policy" not in ask(base, keys["ceiling"], model="gemma-2-9b-it").headers
        with pytest.raises(openai.PermissionDeniedError) as err:
            ask(base, keys["floor"], model="gemma-2-9b-it")  # predicted below the floor for this prompt
        assert err.value.code == "key_quality_floor"
        assert "x-switchboard-key-policy" not in ask(base, keys["floor"], model="llama-3.1-8b-instruct").headers
        raw = ask(base, keys["floor"], model="local-small")  # the router does not know it: served, quality unknown
        assert raw.headers["x-switchboard-key-policy"] == "quality-unknown"


def test_when_the_compliant_expert_is_cold_degrade_serves_now_reject_says_retry_and_queue_waits(tmp_path, router):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    limits = dict(quality_floor=ONLY_8B_MEETS)  # only llama-3.1-8b meets it, and it starts cold
    keys = make_keys(url, **{p.value: KeyLimits(**limits, on_violation=p) for p in OnViolation})
    # One gateway per policy: the first request wakes the cold expert (fleet-aware routing hides cold starts).
    with serve(url, router, eight_b_warm=False) as base:
        raw = ask(base, keys["degrade"])
        assert raw.headers["x-switchboard-expert"] == "llama-3.1-nemotron-51b-instruct"  # warm, and the closest to the floor
        assert raw.headers["x-switchboard-key-policy"].startswith("degraded; violated=quality_floor")
    with serve(url, router, eight_b_warm=False) as base:
        with pytest.raises(openai.InternalServerError) as err:
            ask(base, keys["reject"])
        assert err.value.status_code == 503 and err.value.code == "key_quality_floor"
        assert int(err.value.response.headers["retry-after"]) >= 1 and "is starting" in err.value.message
        # The rejection woke the compliant expert: retried, the same key is served by it.
        deadline = time.monotonic() + 30
        while True:
            try:
                raw = ask(base, keys["reject"])
                break
            except openai.InternalServerError:
                assert time.monotonic() < deadline, "the rejected request's expert never became warm"
                time.sleep(0.1)
        assert raw.headers["x-switchboard-expert"] == "llama-3.1-8b-instruct"
    with serve(url, router, eight_b_warm=False) as base:
        raw = ask(base, keys["queue"])  # waits for the cold start
        assert raw.headers["x-switchboard-expert"] == "llama-3.1-8b-instruct" and raw.headers["x-switchboard-cold-start"] == "true"
