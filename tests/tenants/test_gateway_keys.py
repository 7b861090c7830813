"""API keys through the real gateway (uvicorn on a free port, the official openai client, simulated experts):
401/403, rate limits (429 + Retry-After), budgets (402, surviving a restart), the request log's key_id, and
secrets absent from every log, the database and every error body."""

from __future__ import annotations

import io
import logging
import time

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.gateway.auth import AuthConfigError
from switchboard.observability.logs import JsonFormatter
from switchboard.storage import database
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.store import create_key, load_keys, revoke_key, update_key_limits
from switchboard.testing.servers import serve_in_thread

ADMIN_KEY = "admin-" + "x" * 40
CONFIG = """
experts:
  - id: cheap
    backend: {{kind: simulated, time_scale: 0}}
    usd_per_mtok_input: 1.0
    usd_per_mtok_output: 2.0
storage: {{url: "{url}", flush_interval_s: 0.05}}
auth: {{enabled: true, refresh_interval_s: 0.1}}
"""


def new_key(url: str, name: str, **limits) -> tuple[str, str]:
    engine = database.open_engine(url)
    database.migrate(engine)
    key, secret = create_key(engine, name, "acme", KeyLimits(**limits))
    engine.dispose()
    return key.key_id, secret


def serve(url: str, **kwargs):
    return serve_in_thread(build_app(parse_config(CONFIG.format(url=url)), environ={"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY}, **kwargs))


def chat(base: str, secret: str, model: str = "cheap", max_tokens: int | None = 4, **kwargs):
    client = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    return client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}], **kwargs)


def test_missing_unknown_and_revoked_keys_are_401_and_admin_routes_need_the_admin_key(db_url):
    key_id, secret = new_key(db_url, "app")
    with serve(db_url) as base:
        assert chat(base, secret).headers["x-switchboard-expert"] == "cheap"
        for bad in ("sk-sb-" + "A" * 43, ADMIN_KEY):
            with pytest.raises((openai.AuthenticationError, openai.PermissionDeniedError)) as err:
                chat(base, bad)
            assert err.value.status_code == (403 if bad == ADMIN_KEY else 401)
        missing = httpx.post(base + "/v1/chat/completions", json={"model": "cheap", "messages": [{"role": "user", "content": "hi"}]})
        assert missing.status_code == 401 and missing.json()["error"] == {
            "message": "missing API key: send 'Authorization: Bearer <key>'", "type": "authentication_error", "param": None, "code": "missing_api_key"}
        assert httpx.get(base + "/v1/models").status_code == 401
        assert httpx.get(base + "/v1/models", headers={"authorization": f"Bearer {secret}"}).status_code == 200
        # /admin/*: the admin key; an API key is 403, no key 401. Health and the dashboard page stay open.
        assert httpx.get(base + "/admin/fleet").status_code == 401
        assert httpx.get(base + "/admin/fleet", headers={"authorization": f"Bearer {secret}"}).status_code == 403
        assert httpx.get(base + "/admin/fleet", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
        assert httpx.get(base + "/healthz").status_code == 200 and httpx.get(base + "/dashboard").status_code == 200
        # Revoked by another process (the CLI): refused once the gateway re-reads the table.
        engine = database.open_engine(db_url)
        revoke_key(engine, key_id)
        engine.dispose()
        deadline = time.monotonic() + 10
        while True:
            answer = httpx.get(base + "/v1/models", headers={"authorization": f"Bearer {secret}"})
            if answer.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "revoked_api_key"
        assert key_id in answer.json()["error"]["message"]


def test_answers_carry_openais_rate_limit_headers_for_a_keys_rpm_and_tpm(db_url):
    """What clients that pace themselves read (LangChain's and LiteLLM's rate limiters, users' own code): each limit,
    what is left of it, when it is whole again; on the 429 too. None for a limit the key does not have."""
    _, both = new_key(db_url, "both", rpm=3, tpm=1000)
    _, rpm_only = new_key(db_url, "rpm-only", rpm=5)
    _, unlimited = new_key(db_url, "unlimited")
    with serve(db_url) as base:
        first = chat(base, both).headers
        assert (first["x-ratelimit-limit-requests"], first["x-ratelimit-remaining-requests"]) == ("3", "2")
        assert first["x-ratelimit-limit-tokens"] == "1000" and 900 < int(first["x-ratelimit-remaining-tokens"]) < 1000  # prompt + max_tokens held
        assert first["x-ratelimit-reset-requests"].endswith("s") and first["x-ratelimit-reset-tokens"] == first["x-ratelimit-reset-requests"]
        assert chat(base, both).headers["x-ratelimit-remaining-requests"] == "1"
        assert chat(base, both).headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as err:
            chat(base, both)
        assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0" and "retry-after" in err.value.response.headers
        only = chat(base, rpm_only).headers
        assert only["x-ratelimit-remaining-requests"] == "4" and "x-ratelimit-limit-tokens" not in only
        assert not any(name.startswith("x-ratelimit") for name in chat(base, unlimited).headers)
        stream = openai.OpenAI(base_url=base + "/v1", api_key=rpm_only, max_retries=0).chat.completions.with_raw_response.create(
            model="cheap", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True)
        assert stream.headers["x-ratelimit-remaining-requests"] == "3"  # a stream's headers too


def test_rate_limits_answer_429_with_retry_after_naming_the_limit(db_url):
    _, rpm_secret = new_key(db_url, "rpm", rpm=2)
    _, tpm_secret = new_key(db_url, "tpm", tpm=200)
    _, tpm350 = new_key(db_url, "tpm350", tpm=350)
    with serve(db_url) as base:
        chat(base, rpm_secret)
        chat(base, rpm_secret)
        with pytest.raises(openai.RateLimitError) as err:
            chat(base, rpm_secret)
        assert err.value.code == "rpm_exceeded" and "2 requests per minute" in err.value.message
        assert 1 <= int(err.value.response.headers["retry-after"]) <= 60 and err.value.response.headers["x-switchboard-limit"] == "rpm"
        # One request can never fit: said so at once.
        with pytest.raises(openai.RateLimitError) as err:
            chat(base, tpm_secret, max_tokens=300)
        assert err.value.code == "tpm_exceeded" and "this request alone" in err.value.message
        # Tokens per minute count real usage once the answer is in: a request without max_tokens is reserved at
        # prompt + 256 (defaults.max_tokens) but the simulated expert answers 64 tokens. Reserved estimates
        # alone (2 x ~265 > 350) would refuse the second request; real usage (~73 + ~265) admits it.
        chat(base, tpm350, max_tokens=None)
        chat(base, tpm350, max_tokens=None)
        with pytest.raises(openai.RateLimitError) as err:
            chat(base, tpm350, max_tokens=None)
        assert err.value.code == "tpm_exceeded" and "350 tokens per minute" in err.value.message
        assert 1 <= int(err.value.response.headers["retry-after"]) <= 60 and err.value.response.headers["x-switchboard-limit"] == "tpm"


def test_a_raised_limit_applies_without_a_restart(db_url):
    key_id, secret = new_key(db_url, "grows", rpm=1)
    with serve(db_url) as base:
        chat(base, secret)
        with pytest.raises(openai.RateLimitError):
            chat(base, secret)
        # Raised by another process (`switchboard keys update`): served once the gateway re-reads the table.
        engine = database.open_engine(db_url)
        update_key_limits(engine, key_id, KeyLimits(rpm=100))
        assert [k.limits.rpm for k in load_keys(engine) if k.key_id == key_id] == [100]
        engine.dispose()
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = chat(base, secret)
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the raised limit was not applied within 10 s"
                time.sleep(0.05)
        assert answer.headers["x-switchboard-expert"] == "cheap"


def test_budgets_answer_402_and_survive_a_restart(db_url):
    key_id, secret = new_key(db_url, "budget", usd_per_day=1e-6)
    _, monthly = new_key(db_url, "monthly", usd_per_month=1e-6)
    with serve(db_url) as base:
        first = chat(base, secret, max_tokens=8)  # served: the budget is soft by the request that crosses it
        with pytest.raises(openai.APIStatusError) as err:
            chat(base, secret)
        assert err.value.status_code == 402 and err.value.code == "usd_per_day_exceeded" and "daily budget of 1e-06 USD" in err.value.message
        assert 0 < int(err.value.response.headers["retry-after"]) <= 86400
        chat(base, monthly, max_tokens=8)
        with pytest.raises(openai.APIStatusError) as err:
            chat(base, monthly)
        assert err.value.status_code == 402 and err.value.code == "usd_per_month_exceeded"
    with serve(db_url) as base:  # a new process: spend rebuilt from the request log
        with pytest.raises(openai.APIStatusError) as err:
            chat(base, secret)
        assert err.value.status_code == 402
    engine = create_engine(db_url)
    with engine.connect() as connection:
        logged = connection.execute(text("SELECT id, key_id, usd_cost FROM requests WHERE key_id = :k"), {"k": key_id}).all()
    engine.dispose()
    assert [(r[0], r[1]) for r in logged] == [(first.parse().id, key_id)] and logged[0][2] > 1e-6


def test_secrets_never_appear_in_logs_the_database_or_error_bodies(db_url):
    key_id, secret = new_key(db_url, "secretive", rpm=1)
    revoked_id, revoked = new_key(db_url, "gone")
    engine = database.open_engine(db_url)
    revoke_key(engine, revoked_id)
    engine.dispose()
    bodies: list[str] = []
    # JSON lines formatted as they are logged (in the server's thread, where the request's context is), as in production.
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level, root.level = root.level, logging.DEBUG
    try:
        with serve(db_url, access_log=True) as base:
            ok = chat(base, secret)
            bodies.append(ok.text)
            stream = openai.OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0)
            for attempt_secret in (secret, revoked, secret + "x", ADMIN_KEY):
                answer = httpx.post(base + "/v1/chat/completions", headers={"authorization": f"Bearer {attempt_secret}"},
                                    json={"model": "cheap", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
                assert answer.status_code in (401, 403, 429)
                bodies.append(answer.text + str(dict(answer.headers)))
            with pytest.raises(openai.RateLimitError):
                list(stream.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "hi"}], stream=True))
            bodies.append(httpx.get(base + "/admin/fleet", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = captured.getvalue().splitlines()
    access_lines = [line for line in lines if '"logger":"switchboard.access"' in line]
    assert access_lines and all(f'"key_id":"{key_id}"' in line for line in access_lines)  # logs name the key by id
    engine = create_engine(db_url)
    with engine.connect() as connection:
        dump = [str(row) for table in ("requests", "api_keys") for row in connection.execute(text(f"SELECT * FROM {table}"))]
    engine.dispose()
    assert any(key_id in row for row in dump)  # the request log names the key by id
    for secret_text in (secret, revoked, ADMIN_KEY):
        for where, texts in (("logs", lines), ("database", dump), ("answers", bodies)):
            leaked = [t for t in texts if secret_text in t or secret_text[6:] in t]
            assert not leaked, f"a secret appears in the {where}: {leaked[:1]}"


def test_auth_needs_the_admin_key_and_storage():
    config = parse_config(CONFIG.format(url="sqlite://"))
    with pytest.raises(AuthConfigError, match="SWITCHBOARD_ADMIN_KEY"):
        build_app(config, environ={})
    with pytest.raises(Exception, match="auth.enabled needs storage.enabled"):
        parse_config(CONFIG.format(url="sqlite://").replace("storage: {url: \"sqlite://\", flush_interval_s: 0.05}", "storage: {enabled: false}"))


def test_serve_refuses_to_start_without_the_admin_key(tmp_path):
    from typer.testing import CliRunner

    from switchboard.cli.main import _register_subcommands, app as cli_app

    _register_subcommands()
    config = tmp_path / "auth.yaml"
    config.write_text(CONFIG.format(url=f"sqlite:///{tmp_path / 'r.db'}"))
    result = CliRunner().invoke(cli_app, ["serve", "--config", str(config), "--no-router", "--port", "9"], env={"SWITCHBOARD_ADMIN_KEY": ""})
    assert result.exit_code == 2 and "$SWITCHBOARD_ADMIN_KEY is empty or unset" in result.output


def test_auth_is_off_by_default_and_any_key_works(tmp_path):
    config = parse_config(CONFIG.format(url=f"sqlite:///{tmp_path / 'r.db'}").replace("auth: {enabled: true, refresh_interval_s: 0.1}", ""))
    with serve_in_thread(build_app(config, environ={})) as base:
        assert chat(base, "anything").headers["x-switchboard-expert"] == "cheap"
        assert httpx.get(base + "/admin/fleet").status_code == 200


def test_a_key_can_only_score_its_own_requests(db_url):
    _, mine = new_key(db_url, "mine")
    _, theirs = new_key(db_url, "theirs")
    with serve(db_url) as base:
        request_id = chat(base, mine).parse().id

        def feedback(secret: str) -> int:
            return httpx.post(base + "/v1/feedback", headers={"authorization": f"Bearer {secret}"},
                              json={"request_id": request_id, "score": 0.5}).status_code

        assert (feedback(theirs), feedback(mine)) == (404, 201)  # still queued
        engine = create_engine(db_url)
        deadline = time.monotonic() + 10
        with engine.connect() as connection:  # wait for the flush: then answered from the database
            while not connection.execute(text("SELECT 1 FROM requests WHERE id = :i"), {"i": request_id}).first():
                assert time.monotonic() < deadline, "the request was never flushed"
                time.sleep(0.05)
                connection.rollback()
        engine.dispose()
        assert (feedback(theirs), feedback(mine)) == (404, 201)


def test_without_a_router_a_floor_cannot_be_checked_and_the_answer_says_so(db_url):
    _, floor = new_key(db_url, "floor", quality_floor=0.5)
    _, ceiling = new_key(db_url, "ceiling", usd_per_mtok_ceiling=1.0)  # cheap costs 1.5 USD/Mtok blended
    with serve(db_url) as base:
        assert chat(base, floor, model="auto").headers["x-switchboard-key-policy"] == "quality-unknown"
        with pytest.raises(openai.PermissionDeniedError) as err:
            chat(base, ceiling, model="auto")
        assert err.value.code == "key_cost_ceiling"


def test_switchboard_status_sends_the_admin_key(db_url):
    from typer.testing import CliRunner

    from switchboard.cli.main import _register_subcommands, app as cli_app

    _register_subcommands()
    with serve(db_url) as base:
        shown = CliRunner().invoke(cli_app, ["status", "--url", base], env={"COLUMNS": "200", "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY})
        assert shown.exit_code == 0 and "cheap" in shown.output
        refused = CliRunner().invoke(cli_app, ["status", "--url", base], env={"SWITCHBOARD_ADMIN_KEY": ""})
        assert refused.exit_code == 1 and "401" in refused.output
