"""The gateway driven by the official openai client (sync and async, streaming and not) over real HTTP."""

from __future__ import annotations

import time

import httpx
import openai
import pytest


@pytest.fixture
def client(gateway_url):
    with openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(gateway_url):
    async with openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_chat_through_an_openai_upstream(client, upstream):
    raw = client.chat.completions.with_raw_response.create(model="mock", messages=[{"role": "user", "content": "hi"}], temperature=0.3)
    answer = raw.parse()
    assert answer.choices[0].message.content == "mock answer"
    assert answer.model == "mock"
    assert answer.usage.total_tokens == 9
    assert raw.headers["x-switchboard-expert"] == "mock"
    assert raw.headers["x-switchboard-replica"].startswith("mock/")
    assert upstream.last_body["temperature"] == 0.3  # sampling fields reach the upstream unchanged


def test_streamed_chat_relays_every_chunk_and_usage(client):
    stream = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1


def test_completions_endpoint(client):
    answer = client.completions.create(model="mock", prompt="Once upon a time", max_tokens=5)
    assert answer.choices[0].text == "mock answer"
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="mock", prompt="x", stream=True) if c.choices)
    assert streamed == "tok0 tok1 tok2 tok3 tok4 "


def test_several_prompts_reach_an_openai_upstream_as_sent(client, upstream):
    client.completions.create(model="mock", prompt=["Once upon a time", "In a galaxy"], max_tokens=5, n=2)
    assert upstream.last_body["prompt"] == ["Once upon a time", "In a galaxy"] and upstream.last_body["n"] == 2


@pytest.mark.parametrize("prompt", [[101, 2023, 2003], [[101, 2023], [101, 2003, 2005]]])
def test_token_id_prompts_reach_an_openai_upstream_as_sent(client, upstream, prompt):
    answer = client.completions.create(model="mock", prompt=prompt, max_tokens=5)
    assert upstream.last_body["prompt"] == prompt and answer.choices[0].text == "mock answer"


def test_simulated_expert_answers_with_marked_placeholder(client):
    answer = client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hello"}], max_tokens=12)
    assert answer.choices[0].message.content == "[simulated small: 12 tokens]"
    assert answer.usage.completion_tokens == 12
    assert answer.choices[0].finish_reason == "length"
    streamed = client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hello"}], max_tokens=12, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "[simulated small: 12 tokens]"


def test_auto_answers_with_the_default_expert_and_says_why(client):
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hello"}], max_tokens=3)
    assert raw.headers["x-switchboard-expert"] == "small"
    assert "reason" in raw.headers["x-switchboard-route"]


def test_models_lists_auto_and_every_expert(client, gateway_config):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "auto"
    assert set(ids[1:]) == {e.id for e in (*gateway_config.experts, *gateway_config.embedding_experts)}
    assert "all-minilm-l6-v2" in ids  # the local embedding expert is there by default


def test_models_retrieve_gives_each_listed_model_and_a_404_for_others(client):
    listed = list(client.models.list())
    for model in listed:
        assert client.models.retrieve(model.id) == model
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    assert "no-such-model" in missing.value.body["message"]


async def test_async_client_streams_concurrently(aclient):
    import asyncio

    async def one(i: int) -> str:
        stream = await aclient.chat.completions.create(model="mock", messages=[{"role": "user", "content": str(i)}], stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert set(results) == {"tok0 tok1 tok2 tok3 tok4 "}
    answer = await aclient.chat.completions.create(model="small", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert answer.usage.completion_tokens == 2


def test_health_fleet_and_openapi(gateway_url):
    assert httpx.get(gateway_url + "/healthz").json() == {"status": "ok"}
    # Serving starts without waiting for simulated warm_at_start replicas (only real engines are awaited), so on
    # a busy machine the replica may still be starting: wait for it (bounded), then check it is warm.
    deadline = time.monotonic() + 30
    while True:
        fleet = httpx.get(gateway_url + "/admin/fleet").json()
        replicas = {e["id"]: e for e in fleet["experts"]}["small"]["replicas"]
        if replicas and replicas[0]["state"] != "starting" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert replicas[0]["state"] == "warm"
    spec = httpx.get(gateway_url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz", "/admin/fleet"} <= set(spec["paths"])
    assert "ChatCompletionRequest" in spec["components"]["schemas"]


def test_a_client_that_leaves_mid_stream_frees_its_replica(gateway_url):
    import time

    def small_replicas(http):
        return next(e for e in http.get("/admin/fleet").json()["experts"] if e["id"] == "small")["replicas"]

    with httpx.Client(base_url=gateway_url, timeout=30) as http:
        failed_before = sum(r["num_failed"] for r in small_replicas(http))
        body = {"model": "small", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4000, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        # The connection closed after one chunk of a long answer: the gateway stops the engine, releases the
        # replica and counts the stream as cut short (not served).
        deadline = time.monotonic() + 30
        while True:
            replicas = small_replicas(http)
            if all(r["num_running"] == 0 for r in replicas) and sum(r["num_failed"] for r in replicas) == failed_before + 1:
                break
            assert time.monotonic() < deadline, f"the abandoned stream was not released: {replicas}"
            time.sleep(0.05)
