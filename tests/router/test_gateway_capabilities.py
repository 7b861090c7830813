"""`"model": "auto"` chooses among the experts that can serve the request (gateway/handlers.py `_able`): in a mixed
fleet a request with tools, image content, logprobs or a long prompt goes to an expert that can take it, not to
the router's favourite followed by a 400; and when none can, the 400 says why, naming each expert's reason. The
real gateway and the packaged router, the official openai client as the caller."""

from __future__ import annotations

import json

import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.router import load_default_router
from switchboard.router.chooser import RouterChooser
from switchboard.testing.servers import serve_in_thread
from switchboard.testing.upstream import MockUpstream

# The router knows all three. The cheap ones are simulated (text only, no tools, no logprobs), one with a short
# context; the dear one relays to an OpenAI-compatible server, which takes everything.
CONFIG = """
experts:
  - id: gemma-2-9b-it
    backend: {{kind: simulated, time_scale: 0}}
    usd_per_mtok_input: 0.1
    usd_per_mtok_output: 0.1
    context_tokens: 256
  - id: llama-3.1-8b-instruct
    backend: {{kind: simulated, time_scale: 0}}
    usd_per_mtok_input: 0.2
    usd_per_mtok_output: 0.2
  - id: llama-3.1-nemotron-51b-instruct
    backend: {{kind: openai, base_url: "{upstream}", model: mock}}
    usd_per_mtok_input: 0.9
    usd_per_mtok_output: 0.9
storage: {{enabled: false}}
"""
CHEAP = ("gemma-2-9b-it", "llama-3.1-8b-instruct")
RELAY = "llama-3.1-nemotron-51b-instruct"
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
QUESTION = [{"role": "user", "content": "What is 12 * 7? Answer with a number."}]


@pytest.fixture(scope="module")
def client():
    with serve_in_thread(MockUpstream(num_chunks=3)) as upstream:
        config = parse_config(CONFIG.format(upstream=upstream + "/v1"))
        app = build_app(config, chooser=RouterChooser(load_default_router(), config.default_expert_id))
        with serve_in_thread(app) as url:
            yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


def ask(client, messages=QUESTION, routing=None, **fields):
    extra = {"routing": routing} if routing is not None else {}
    return client.chat.completions.with_raw_response.create(model="auto", messages=messages, max_tokens=4, extra_body=extra, **fields)


def test_a_cheap_expert_is_chosen_when_it_can_serve(client):
    # The control: at a high cost weight the router sends plain text to a simulated, cheap expert.
    assert ask(client, routing={"cost_weight": 100}).headers["x-switchboard-expert"] in CHEAP


@pytest.mark.parametrize("fields", [
    {"tools": TOOLS},
    {"logprobs": True, "top_logprobs": 2},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is on this picture?"},
                                               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]},
], ids=["tools", "logprobs", "image"])
def test_what_only_one_expert_can_serve_goes_to_it_even_when_cost_prefers_others(client, fields):
    raw = ask(client, routing={"cost_weight": 100}, **fields)
    assert raw.headers["x-switchboard-expert"] == RELAY
    assert json.loads(raw.headers["x-switchboard-route"])["candidates"] == 1
    assert raw.parse().choices[0].message.content == "mock answer"


def test_a_prompt_over_one_experts_context_goes_to_the_others(client):
    long = [{"role": "user", "content": "Please summarise this. " + "word " * 400}]  # ~500 tokens: over gemma's 256
    for _ in range(3):
        assert ask(client, messages=long, routing={"cost_weight": 100}).headers["x-switchboard-expert"] != "gemma-2-9b-it"


def test_when_no_allowed_expert_can_serve_the_400_names_each_reason(client):
    with pytest.raises(openai.BadRequestError) as refused:
        ask(client, routing={"experts": list(CHEAP)}, tools=TOOLS)
    body = refused.value.body
    assert body["code"] == "unsupported_parameter" and body["param"] == "tools"
    assert "no expert that 'auto' may choose can serve this request" in body["message"]
    assert all(f"expert '{e}'" in body["message"] for e in CHEAP)


def test_a_named_expert_that_cannot_serve_is_still_the_clients_400(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gemma-2-9b-it", messages=QUESTION, max_tokens=4, tools=TOOLS)
    assert refused.value.body["param"] == "tools" and "gemma-2-9b-it" in refused.value.body["message"]
