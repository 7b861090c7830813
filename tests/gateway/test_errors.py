"""Bad input is a clear 4xx in OpenAI's error shape; upstream failures are 5xx that name the expert."""

from __future__ import annotations

import httpx
import openai
import pytest

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def http(gateway_url):
    with httpx.Client(base_url=gateway_url, timeout=30) as c:
        yield c


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b"", 400, None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "mock"}', 400, "messages"),
        (b'{"model": "mock", "messages": []}', 400, "messages"),
        (b'{"model": "mock", "messages": "hello"}', 400, "messages"),
        (b'{"model": "mock", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "small", "messages": [{"role": "user", "content": "x"}], "colour": 1}', 400, "colour"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400, "max_tokens"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": 501}', 400, "max_tokens"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', 400, "temperature"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "n": 129}', 400, "n"),
        (b'{"model": "small", "messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 2}', 400, "logprobs"),
        (b'{"model": "small", "messages": [{"role": "user", "content": "x"}], "logprobs": true}', 400, "logprobs"),
        (b'{"model": "small", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]}', 400, "tools"),
        (b'{"model": "small", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}', 400, "response_format"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 5}}', 400, "logit_bias.abc"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"7": 101}}', 400, "logit_bias.7"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}', 400, "stop"),
        (b'{"model": "nobody", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "routing": {"experts": ["ghost"]}}', 400, "routing.experts"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "routing": {"cost_weight": -1}}', 400, "routing.cost_weight"),
    ],
)
def test_bad_requests_are_4xx_with_openai_errors(http, body, status, param):
    response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = _error(response)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("model", "prompt", "n", "needle"), [
    ("auto", [1, 2, 3], 1, "routes by the prompt's text"), ("mock", [[1, 2], []], 1, "non-empty prompts"),
    ("mock", [], 1, "1 to 128 non-empty prompts"), ("mock", ["x"] * 65, 2, "1 to 64 non-empty prompts"),
    ("mock", [1, "x"], 1, "prompt"),
])
def test_completion_prompts_that_cannot_be_served_are_a_plain_400(http, model, prompt, n, needle):
    response = http.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 2, "n": n})
    assert response.status_code == 400, response.text
    error = _error(response)
    assert error["param"] == "prompt" and needle in error["message"]


def test_token_id_prompts_are_served_by_a_local_engine_and_counted_as_given(http):
    # llama.cpp evaluates them (tests/engines/test_llamacpp_fields.py); the simulated engine counts them.
    answer = http.post("/v1/completions", json={"model": "small", "prompt": [[1, 2, 3], [4, 5]], "max_tokens": 2, "n": 2}).json()
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2, 3] and answer["usage"]["prompt_tokens"] == 3 + 2
    refused = http.post("/v1/completions", json={"model": "small", "prompt": [1, 2, 3], "max_tokens": 2, "echo": True})
    assert refused.status_code == 400 and _error(refused)["param"] == "echo"  # a timing model has no prompt logprobs to echo


def test_prompt_longer_than_the_context_is_400(http):
    response = http.post("/v1/chat/completions", json={"model": "mock", "messages": [{"role": "user", "content": "word " * 2000}]})
    assert response.status_code == 400
    assert _error(response)["code"] == "context_length_exceeded"
    response = http.post("/v1/completions", json={"model": "mock", "prompt": "x" * 3000, "max_tokens": 300})
    assert response.status_code == 400 and _error(response)["param"] == "max_tokens"


def test_body_over_the_size_limit_is_413(http, gateway_config):
    limit = gateway_config.gateway.max_body_bytes
    response = http.post("/v1/chat/completions", content=b"{" + b" " * limit + b"}", headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert _error(response)["code"] == "body_too_large"


def test_unknown_paths_and_methods(http):
    assert http.get("/v2/nothing").status_code == 404
    assert _error(http.get("/v1/completions"))["code"] == "method_not_allowed"
    assert _error(http.put("/v1/chat/completions"))["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("model", "status", "needle"),
    [
        ("broken", 502, "mock internal failure"),
        ("garbage", 502, "is not an OpenAI"),
        ("down", 503, "cannot connect"),
        ("limited", 429, "rate limit"),
        ("stall", 504, "read timeout"),
        ("picky", 400, "context window"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_name_the_expert(http, model, status, needle, stream):
    response = http.post("/v1/chat/completions", json={"model": model, "messages": MSG, "stream": stream})
    assert response.status_code == status, response.text
    error = _error(response)
    assert f"'{model}'" in error["message"] and needle in error["message"]
    assert response.headers["x-switchboard-expert"] == model


def test_a_stream_cut_mid_way_ends_with_an_explicit_error_event(gateway_url):
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)
    received = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for chunk in client.chat.completions.create(model="cut", messages=MSG, stream=True):
            received.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == "tok0 tok1 "
