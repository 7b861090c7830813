"""The OpenAI fields a llama.cpp expert honours, through the real gateway and the real SmolLM2 model on this CPU
(the official openai client as the caller): JSON output constrained by a grammar from the json_schema, and a
clear 400 naming what it cannot do."""

from __future__ import annotations

import json

import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

pytestmark = pytest.mark.llamacpp

CONFIG = """
experts:
  - id: smol
    backend: {kind: llamacpp, n_threads: 1}
    context_tokens: 1024
    warm_at_start: true
    ttft_slo_s: 300             # a loaded test machine must not turn answers into 429s
storage: {enabled: false}
"""


@pytest.fixture(scope="module")
def client():
    with serve_in_thread(build_app(parse_config(CONFIG)), startup_timeout_s=180) as url:
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
            yield c


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "sunny": {"type": "boolean"}},
          "required": ["city", "sunny"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_is_constrained_by_a_grammar(client, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA}}
    messages = [{"role": "user", "content": "Describe the weather in Paris as JSON."}]
    if stream:
        chunks = client.chat.completions.create(model="smol", messages=messages, response_format=fmt, max_tokens=60, temperature=0, seed=1, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(model="smol", messages=messages, response_format=fmt, max_tokens=60, temperature=0,
                                              seed=1).choices[0].message.content
    answer = json.loads(text)
    assert set(answer) == {"city", "sunny"} and isinstance(answer["sunny"], bool)


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_are_n_generations_with_usage_counting_the_prompt_once(client, stream):
    messages = [{"role": "user", "content": "Name a colour."}]
    one = client.chat.completions.create(model="smol", messages=messages, max_tokens=6, temperature=0)
    if stream:
        chunks = list(client.chat.completions.create(model="smol", messages=messages, max_tokens=6, temperature=0, n=2, stream=True,
                                                     stream_options={"include_usage": True}))
        texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i) for i in (0, 1)]
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
    else:
        answer = client.chat.completions.create(model="smol", messages=messages, max_tokens=6, temperature=0, n=2)
        assert [c.index for c in answer.choices] == [0, 1]
        texts = [c.message.content for c in answer.choices]
        finishes = [c.finish_reason for c in answer.choices]
        usage = answer.usage
    assert texts == [one.choices[0].message.content] * 2  # greedy: the same answer twice
    assert len(finishes) == 2
    assert usage.prompt_tokens == one.usage.prompt_tokens and usage.completion_tokens == 2 * one.usage.completion_tokens


def test_json_object_and_penalties_are_honoured(client):
    choice = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
                                            response_format={"type": "json_object"}, max_tokens=120, temperature=0,
                                            frequency_penalty=0.5, presence_penalty=0.2, extra_body={"repetition_penalty": 1.2}).choices[0]
    text = choice.message.content
    # Unconstrained, this model answers in prose; the grammar makes it JSON from the first token (whole unless cut).
    assert text.lstrip().startswith("{")
    assert choice.finish_reason == "length" or isinstance(json.loads(text), dict)


@pytest.mark.parametrize(("field", "value"), [("tools", [{"type": "function", "function": {"name": "f"}}])])
def test_what_llamacpp_cannot_do_is_a_400_naming_the_field(client, field, value):
    with pytest.raises(openai.BadRequestError) as failed:
        client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=4, **{field: value})
    assert failed.value.body["param"] == field and "llama.cpp" in failed.value.body["message"]
