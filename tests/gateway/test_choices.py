"""`n` > 1 and several legacy-completion prompts on an engine that answers one choice (gateway/choices.py), through
the real gateway with the official openai client: choices indexed as OpenAI's, streamed and not, usage counting each
prompt once."""

from __future__ import annotations

import openai
import pytest

from switchboard.config import parse_config
from switchboard.engines.base import GenerationRequest
from switchboard.gateway.app import build_app
from switchboard.gateway.choices import choice_requests
from switchboard.testing.servers import serve_in_thread

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def client():
    config = parse_config("experts:\n  - id: small\n    backend: {kind: simulated, time_scale: 0}\nstorage: {enabled: false}\n")
    with serve_in_thread(build_app(config)) as url:
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as c:
            yield c


def test_whole_answer_has_n_indexed_choices_and_summed_usage(client):
    one = client.chat.completions.create(model="small", messages=MESSAGES, max_tokens=5)
    answer = client.chat.completions.create(model="small", messages=MESSAGES, max_tokens=5, n=3)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert {c.message.content for c in answer.choices} == {"[simulated small: 5 tokens]"}
    assert answer.usage.prompt_tokens == one.usage.prompt_tokens
    assert answer.usage.completion_tokens == 3 * one.usage.completion_tokens == 15
    legacy = client.completions.create(model="small", prompt="Once", max_tokens=4, n=2)
    assert [c.index for c in legacy.choices] == [0, 1] and legacy.usage.completion_tokens == 8


def test_streamed_choices_each_get_a_role_their_text_and_a_finish_then_one_usage(client):
    chunks = list(client.chat.completions.create(model="small", messages=MESSAGES, max_tokens=5, n=2, stream=True,
                                                 stream_options={"include_usage": True}))
    by_choice = {i: [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i] for i in (0, 1)}
    for choices in by_choice.values():
        assert choices[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in choices) == "[simulated small: 5 tokens]"
        assert [c.finish_reason for c in choices if c.finish_reason] == ["length"]
    assert [c.usage.completion_tokens for c in chunks if c.usage] == [10]
    assert len({c.id for c in chunks}) == 1


def test_later_choices_get_the_next_seeds_so_they_differ_yet_reproduce():
    request = GenerationRequest("r", "chat", {"model": "small", "messages": MESSAGES, "seed": 7, "n": 3}, 5, 3)
    assert [r.body["seed"] for r in choice_requests(request)] == [7, 8, 9]
    unseeded = GenerationRequest("r", "chat", {"model": "small", "messages": MESSAGES, "n": 2}, 5, 3)
    assert all("seed" not in r.body for r in choice_requests(unseeded))


def test_several_prompts_are_one_generation_per_prompt_and_choice_in_openais_order():
    body = {"model": "small", "prompt": ["a", "bb bb bb bb"], "n": 2, "seed": 1}
    requests = choice_requests(GenerationRequest("r", "completion", body, 5, 9))
    assert [(r.body["prompt"], r.body["seed"]) for r in requests] == [("a", 1), ("a", 2), ("bb bb bb bb", 1), ("bb bb bb bb", 2)]
    assert [r.num_prompt_tokens_estimate for r in requests] == [1, 1, 3, 3]  # each prompt's own


@pytest.mark.parametrize("stream", [False, True])
def test_a_legacy_completion_of_several_prompts_answers_each_with_n_choices(client, stream):
    prompts = ["Once upon a time", "The capital of France is"]
    singles = [client.completions.create(model="small", prompt=p, max_tokens=3) for p in prompts]
    asked = dict(model="small", prompt=prompts, max_tokens=3, n=2)
    if stream:
        chunks = list(client.completions.create(**asked, stream=True, stream_options={"include_usage": True}))
        texts = {i: "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(4)}
        finishes = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = [c.usage for c in chunks if c.usage][-1]
        assert sorted(finishes) == [0, 1, 2, 3]
    else:
        answer = client.completions.create(**asked)
        assert [c.index for c in answer.choices] == [0, 1, 2, 3]
        texts, usage = {c.index: c.text for c in answer.choices}, answer.usage
    assert set(texts.values()) == {"[simulated small: 3 tokens]"}
    # Each prompt counted once (its own tokens), every choice's completion tokens.
    assert usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert usage.completion_tokens == 4 * 3
