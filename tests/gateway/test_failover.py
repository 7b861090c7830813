"""Failover and circuit breakers through the real gateway (uvicorn on a free port, the official openai client),
in front of a real mock upstream that fails in every way a real one does: 500s, garbage, a stall after the
headers, a stream that stalls mid-way, a slowloris trickle, a 4xx. Every request ends with a complete answer
or an explicit error naming the expert, and is in the request log exactly once (checked at teardown)."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter

import httpx
import openai
import pytest
from sqlalchemy import create_engine, select

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.gateway.choosing import ExpertChoice
from switchboard.storage.models import requests_table
from switchboard.testing.servers import serve_in_thread
from switchboard.testing.upstream import MockUpstream

MESSAGES = [{"role": "user", "content": "Say something"}]


def _config(upstream_url: str, db_url: str, failure_threshold: int) -> str:
    def openai_expert(expert_id: str, model: str, extra: str = "", fallbacks: str = "") -> str:
        return f"""
  - id: {expert_id}
    backend: {{kind: openai, base_url: "{upstream_url}", model: {model}{extra}}}
    context_tokens: 1000
    max_output_tokens: 500{fallbacks}"""

    to_ok = "\n    fallbacks: [ok]"
    return "experts:" + "".join([
        openai_expert("ok", "mock"),
        openai_expert("broken", "fail-500", fallbacks=to_ok),
        openai_expert("broken-alone", "fail-500"),
        openai_expert("garbage", "garbage", fallbacks=to_ok),
        openai_expert("stall", "stall-after-headers", ", read_timeout_s: 0.5", fallbacks=to_ok),
        openai_expert("stall-mid", "stall-mid-stream", ", read_timeout_s: 0.5", fallbacks=to_ok),
        openai_expert("slowloris", "slowloris", fallbacks=to_ok),
        openai_expert("picky", "reject-400", fallbacks=to_ok),
        openai_expert("flip", "flip"),
    ]) + f"""
gateway: {{request_timeout_s: 3}}
failover:
  backoff_base_s: 0.01
  expert_circuit: {{failure_threshold: {failure_threshold}, window_s: 60, cooldown_s: 0.5}}
storage: {{url: "{db_url}", flush_interval_s: 0.05}}
"""


class RankingChooser:
    """A router stand-in whose ranking is fixed: `broken` first, then `ok`."""

    blocking = False

    def choose(self, prompt_text, routing, candidates):
        return ExpertChoice("broken", reason="fixed ranking for the test", fallbacks=("ok",))


@pytest.fixture(scope="module")
def upstream():
    return MockUpstream(num_chunks=4, trickle_interval_s=0.1)


@contextlib.contextmanager
def _gateway(upstream, tmp_path_factory, failure_threshold: int):
    db_url = f"sqlite:///{tmp_path_factory.mktemp('failover')}/requests.db"
    sent: list[str] = []  # x-request-id of every request the gateway accepted
    with serve_in_thread(upstream) as upstream_base:
        app = build_app(parse_config(_config(upstream_base + "/v1", db_url, failure_threshold)), chooser=RankingChooser())
        with serve_in_thread(app) as url:
            yield url, sent
    # The server has stopped, which flushed the log: every accepted request has exactly one row.
    engine = create_engine(db_url)
    with engine.connect() as connection:
        ids = Counter(r.id for r in connection.execute(select(requests_table.c.id)))
    engine.dispose()
    assert sent and all(ids[i] == 1 for i in sent), {i: ids[i] for i in sent if ids[i] != 1}


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    """Circuits that never open, so that tests do not depend on each other's failures."""
    with _gateway(upstream, tmp_path_factory, 1000) as served:
        yield served


@pytest.fixture
def circuit_gateway(upstream, tmp_path_factory):
    with _gateway(upstream, tmp_path_factory, 3) as served:
        yield served


def _client(served):
    url, sent = served

    def remember(response: httpx.Response) -> None:
        if "x-request-id" in response.headers:
            sent.append(response.headers["x-request-id"])

    http = httpx.Client(event_hooks={"response": [remember]}, timeout=30)
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, http_client=http)


@pytest.fixture
def client(gateway):
    return _client(gateway)


def _failover(headers) -> list[dict]:
    return json.loads(headers.get("x-switchboard-failover", "[]"))


@pytest.mark.parametrize("expert", ["broken", "garbage", "stall"])
def test_a_failing_expert_fails_over_to_its_fallback(client, expert):
    raw = client.chat.completions.with_raw_response.create(model=expert, messages=MESSAGES, max_tokens=5)
    assert raw.parse().choices[0].message.content == "mock answer"
    assert raw.headers["x-switchboard-expert"] == "ok" and raw.parse().model == "ok"
    tried = [a["expert"] for a in _failover(raw.headers)]
    # A 500 or garbage may be transient: one retry on the same expert. A stall moves on at once.
    assert tried == ([expert] if expert == "stall" else [expert, expert])


@pytest.mark.parametrize("expert", ["broken", "garbage", "stall"])
def test_a_stream_failing_before_its_first_token_fails_over_invisibly(client, expert):
    with client.chat.completions.with_streaming_response.create(model=expert, messages=MESSAGES, max_tokens=5, stream=True) as response:
        assert response.headers["x-switchboard-expert"] == "ok"
        assert _failover(response.headers)[0]["expert"] == expert
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_token_id_prompts_never_fail_over_to_another_expert(client):
    """Token ids mean something to one model's vocabulary only: the expert's own retry, then its error — never its
    fallback, which would read the ids as other words. Text prompts to the same expert do fail over."""
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model="broken", prompt=[[1, 2, 3]], max_tokens=5)
    assert caught.value.status_code == 502 and "broken" in caught.value.body["message"]
    assert [a["expert"] for a in _failover(caught.value.response.headers)] == ["broken", "broken"]
    assert client.completions.with_raw_response.create(model="broken", prompt="text", max_tokens=5).headers["x-switchboard-expert"] == "ok"


def test_model_auto_falls_back_along_the_routers_ranking(client):
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES, max_tokens=5)
    assert raw.headers["x-switchboard-expert"] == "ok"
    assert json.loads(raw.headers["x-switchboard-route"])["reason"] == "fixed ranking for the test"
    assert [a["expert"] for a in _failover(raw.headers)] == ["broken", "broken"]


def test_an_expert_without_fallback_answers_a_clear_502_naming_it(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="broken-alone", messages=MESSAGES, max_tokens=5)
    assert caught.value.status_code == 502
    message = caught.value.body["message"]
    assert "broken-alone" in message and "2 attempts failed" in message


def test_the_requests_own_fault_is_not_retried(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="picky", messages=MESSAGES, max_tokens=5)
    assert "picky" in caught.value.body["message"]
    assert "x-switchboard-failover" not in caught.value.response.headers


def test_a_stream_that_stalls_mid_way_ends_with_an_explicit_error_event(client):
    stream = client.chat.completions.create(model="stall-mid", messages=MESSAGES, max_tokens=5, stream=True)
    texts = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts) == "tok0 tok1 "  # the tokens before the stall arrived
    assert "stall-mid" in caught.value.message and "mid-stream" in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_a_slowloris_upstream_is_cut_off_by_the_deadline_with_a_504(client, stream):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="slowloris", messages=MESSAGES, max_tokens=5, stream=stream)
    assert caught.value.status_code == 504
    assert "slowloris" in caught.value.body["message"]


def test_the_circuit_opens_after_repeated_failures_and_closes_after_a_good_probe(circuit_gateway, upstream):
    url, _ = circuit_gateway
    client = _client(circuit_gateway)
    upstream.faults["flip"] = "fail-500"
    try:
        for _ in range(2):  # two attempts, then one: the third failure opens the circuit, so no retry follows
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model="flip", messages=MESSAGES, max_tokens=5)
        fleet = httpx.get(url + "/admin/fleet").json()
        circuit = next(e["circuit"] for e in fleet["experts"] if e["id"] == "flip")
        assert circuit["state"] == "open" and circuit["times_opened"] == 1
        metrics = httpx.get(url + "/metrics").text
        assert 'switchboard_circuit_open{id="flip",scope="expert"} 1.0' in metrics
        assert 'switchboard_failed_attempts_total{code="bad_upstream_response",expert="flip",next="retry"} 1.0' in metrics
        assert 'switchboard_failed_attempts_total{code="bad_upstream_response",expert="flip",next="give-up"} 2.0' in metrics
        seen = upstream.requests_seen
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model="flip", messages=MESSAGES, max_tokens=5)
        assert caught.value.status_code == 503 and "circuit breaker is open" in caught.value.body["message"]
        assert caught.value.response.headers["retry-after"]
        assert upstream.requests_seen == seen  # refused without bothering the upstream
    finally:
        upstream.faults.pop("flip")
    deadline = time.monotonic() + 30
    while True:  # after the cool-down, the next request is the probe; it succeeds and closes the circuit
        try:
            client.chat.completions.create(model="flip", messages=MESSAGES, max_tokens=5)
            break
        except openai.APIStatusError as exc:
            assert exc.status_code == 503 and time.monotonic() < deadline
            time.sleep(0.1)
    fleet = httpx.get(url + "/admin/fleet").json()
    assert next(e["circuit"] for e in fleet["experts"] if e["id"] == "flip")["state"] == "closed"
