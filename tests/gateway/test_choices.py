"""`n` > 1 on an engine that answers one choice (gateway/choices.py), through the real gateway with the official
openai client: n choices indexed as OpenAI's, streamed and not, usage counting the prompt once."""

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
    request = GenerationRequest("r", "chat", {"model": "small", "messages": MESSAGES, "seed": 7}, 5, 3)
    assert [r.body["seed"] for r in choice_requests(request, 3)] == [7, 8, 9]
    unseeded = GenerationRequest("r", "chat", {"model": "small", "messages": MESSAGES}, 5, 3)
    assert all("seed" not in r.body for r in choice_requests(unseeded, 2))
