"""Every accepted request through the real gateway (uvicorn on a free port, the openai client, simulated
experts answering instantly) is in the request log with the right fields; feedback round-trips."""

from __future__ import annotations

import httpx
import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

from .helpers import feedback_table, rows

CONFIG = """
experts:
  - id: cheap
    backend: {{kind: simulated, hardware: l4, time_scale: 0}}
    usd_per_mtok_input: 1.0
    usd_per_mtok_output: 2.0
  - id: big
    backend: {{kind: simulated, hardware: h100, time_scale: 0}}
    usd_per_mtok_input: 5.0
    usd_per_mtok_output: 10.0
storage: {{url: "{url}", flush_interval_s: 0.05}}
"""


def test_every_accepted_request_is_logged_and_feedback_round_trips(db_url):
    app = build_app(parse_config(CONFIG.format(url=db_url)))
    answered: dict[str, dict] = {}
    with serve_in_thread(app) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="cheap", messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=5)
        chat = raw.parse()
        answered[chat.id] = {"expert": "cheap", "kind": "chat", "prompt": "What is 2+2?", "cold": raw.headers["x-switchboard-cold-start"] == "true"}
        stream = client.chat.completions.create(model="big", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
                                                max_tokens=4, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        answered[chunks[0].id] = {"expert": "big", "kind": "chat", "prompt": "Hi there", "cold": None}
        completion = client.completions.create(model="auto", prompt="Once upon a time", max_tokens=3)
        answered[completion.id] = {"expert": completion.model, "kind": "completion", "prompt": "Once upon a time", "cold": None}
        with pytest.raises(openai.NotFoundError):  # refused before an expert: not an accepted request
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])

        with httpx.Client(base_url=base) as http:
            ok = http.post("/v1/feedback", json={"request_id": chat.id, "score": 0.9})
            assert ok.status_code == 201 and ok.json()["request_id"] == chat.id  # queued, not yet flushed: still known
            assert http.post("/v1/feedback", json={"request_id": "chatcmpl-unknown", "score": 1}).status_code == 404
            for bad in ({"request_id": chat.id, "score": 1.5}, {"request_id": chat.id}, {"score": 0.5}, [1], {"request_id": chat.id, "score": 0.5, "x": 1}):
                answer = http.post("/v1/feedback", json=bad)
                assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error", bad
            assert http.post("/v1/feedback", content=b"{nope", headers={"content-type": "application/json"}).status_code == 400
    # The server has shut down: graceful shutdown flushed whatever was still queued.
    logged = {r["id"]: r for r in rows(db_url)}
    assert set(logged) == set(answered)
    for request_id, expected in answered.items():
        r = logged[request_id]
        assert (r["expert"], r["kind"], r["outcome"], r["status"], r["prompt_text"]) == (expected["expert"], expected["kind"], "ok", 200, expected["prompt"])
        assert r["replica"].startswith(expected["expert"] + "#") and r["hardware"] == {"cheap": "l4", "big": "h100"}[expected["expert"]]
        assert r["tokens_in"] > 0 and r["tokens_out"] > 0 and r["key_id"] is None
        assert r["latency_s"] >= r["ttft_s"] >= 0 and r["created_at"] is not None
        prices = {"cheap": (1.0, 2.0), "big": (5.0, 10.0)}[expected["expert"]]
        assert r["usd_cost"] == pytest.approx((r["tokens_in"] * prices[0] + r["tokens_out"] * prices[1]) / 1e6)
        if expected["cold"] is not None:
            assert r["cold_start"] == expected["cold"]
    assert logged[completion.id]["routing_reason"] is not None and logged[chat.id]["routing_reason"] is None
    assert [(f["request_id"], f["score"]) for f in rows(db_url, feedback_table)] == [(chat.id, 0.9)]


def test_responses_are_logged_and_scored_by_their_response_id(db_url):
    """A Responses answer is its chat request's row (kind chat, the last user message as its prompt), and
    `POST /v1/feedback` takes the Response's id for it; another key's or an unknown id is still a 404."""
    app = build_app(parse_config(CONFIG.format(url=db_url)))
    with serve_in_thread(app) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        whole = client.responses.create(model="cheap", instructions="Be brief.", input="What is 2+2?", max_output_tokens=5)
        with client.responses.stream(model="big", input=[{"role": "user", "content": "Hi there"}]) as stream:  # completes (the helper wants that)
            streamed = stream.get_final_response()
        with httpx.Client(base_url=base) as http:
            for response_id, score in ((whole.id, 0.8), (streamed.id, 0.3)):
                ok = http.post("/v1/feedback", json={"request_id": response_id, "score": score})
                assert ok.status_code == 201 and ok.json()["request_id"] == response_id
            assert http.post("/v1/feedback", json={"request_id": "resp_" + "0" * 32, "score": 1}).status_code == 404
    logged = {r["id"]: r for r in rows(db_url)}
    chat_ids = {"chatcmpl-" + whole.id.removeprefix("resp_"): ("cheap", "What is 2+2?"), "chatcmpl-" + streamed.id.removeprefix("resp_"): ("big", "Hi there")}
    assert {i: (logged[i]["expert"], logged[i]["prompt_text"], logged[i]["kind"], logged[i]["outcome"]) for i in chat_ids} == {
        i: (*v, "chat", "ok") for i, v in chat_ids.items()}
    assert sorted((f["request_id"], f["score"]) for f in rows(db_url, feedback_table)) == sorted(zip(chat_ids, (0.8, 0.3)))


def test_feedback_with_the_log_disabled_is_503(tmp_path):
    app = build_app(parse_config(CONFIG.format(url="sqlite://").replace('storage: {url: "sqlite://", flush_interval_s: 0.05}', "storage: {enabled: false}")))
    with serve_in_thread(app) as base:
        answer = httpx.post(base + "/v1/feedback", json={"request_id": "x", "score": 1})
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "storage_disabled"


FAULTY = """
experts:
  - id: mock
    backend: {{kind: openai, base_url: "{upstream}", model: mock}}
  - id: broken
    backend: {{kind: openai, base_url: "{upstream}", model: fail-500}}
  - id: picky
    backend: {{kind: openai, base_url: "{upstream}", model: reject-400}}
  - id: cut
    backend: {{kind: openai, base_url: "{upstream}", model: cut-mid-stream}}
storage: {{url: "sqlite:///{db}", flush_interval_s: 0.05}}
"""


def test_failed_requests_are_logged_with_their_outcome(tmp_path):
    """Accepted requests that end in an error (the expert fails, rejects, or cuts its stream) are logged too."""
    from switchboard.testing.upstream import MockUpstream

    expected: dict[str, tuple[str, str, int]] = {}
    with serve_in_thread(MockUpstream(num_chunks=3)) as upstream:
        db = tmp_path / "log.db"
        app = build_app(parse_config(FAULTY.format(upstream=upstream + "/v1", db=db)))
        with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as http:
            for expert, stream, outcome in [("mock", False, "ok"), ("mock", True, "ok"), ("broken", False, "error"), ("broken", True, "error"),
                                            ("picky", False, "invalid"), ("picky", True, "invalid"), ("cut", True, "error")]:
                answer = http.post("/v1/chat/completions", json={"model": expert, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
                expected[answer.headers["x-request-id"]] = (expert, outcome, answer.status_code)
    logged = {r["id"]: (r["expert"], r["outcome"], r["status"]) for r in rows(f"sqlite:///{db}")}
    assert logged == expected
