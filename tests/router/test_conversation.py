"""The router reads the whole conversation (system prompt, earlier user turns), bounded, question first."""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.router import load_default_router
from switchboard.router.chooser import RouterChooser
from switchboard.router.conversation import ConversationSettings, Turn, routing_text
from switchboard.testing.servers import serve_in_thread

QUESTION = "Which river flows through Vienna?"
SYSTEM = "You are a senior Python engineer. Answer with a complete, tested function and nothing else."
ONLY_51B = {"experts": ["llama-3.1-nemotron-51b-instruct"]}


@given(st.text(max_size=300))
def test_a_one_turn_chat_is_read_exactly_as_the_router_was_trained(text):
    assert routing_text([Turn("user", text)]) == text


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant", "tool"]), st.text(max_size=3000)), min_size=1, max_size=8))
def test_the_latest_user_turn_comes_first_and_the_context_is_bounded(turns):
    conf = ConversationSettings()
    conversation = [Turn(role, text) for role, text in turns]
    out = routing_text(conversation, conf)
    users = [t.text for t in conversation if t.role == "user"]
    if not users:
        assert out == conversation[-1].text
        return
    question = users[-1]
    assert out.startswith(question)
    budget = max(int(conf.max_context_ratio * len(question)), conf.min_context_chars)
    separators = 2 * (conf.max_user_turns + sum(t.role == "system" for t in conversation))
    assert len(out) <= len(question) + budget + separators


def test_assistant_turns_are_not_read_and_system_prompts_are():
    base = [Turn("user", "What is 2 + 2?"), Turn("assistant", "4, and a long digression " * 50), Turn("user", QUESTION)]
    assert "digression" not in routing_text(base)
    assert routing_text(base).startswith(QUESTION) and "2 + 2" in routing_text(base)
    with_system = routing_text([Turn("system", SYSTEM), *base])
    assert SYSTEM in with_system


def test_a_system_prompt_changes_the_features_the_router_reads():
    router = load_default_router()
    bare = router.features([routing_text([Turn("user", QUESTION)])])
    with_system = router.features([routing_text([Turn("system", SYSTEM), Turn("user", QUESTION)])])
    assert not np.allclose(bare, with_system)
    assert not np.allclose(router.predict_quality_from_features(bare), router.predict_quality_from_features(with_system))


CONFIG = """
experts:
  - id: local-small
    backend: {kind: simulated, time_scale: 0}
  - id: llama-3.1-nemotron-51b-instruct
    backend: {kind: simulated, time_scale: 0}
    usd_per_mtok_input: 0.9
    usd_per_mtok_output: 0.9
defaults:
  expert: local-small
"""


@pytest.fixture(scope="module")
def client():
    config = parse_config(CONFIG)
    app = build_app(config, chooser=RouterChooser(load_default_router(), config.default_expert_id))
    with serve_in_thread(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


def predicted(client, messages) -> float:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages, max_tokens=4,
                                                           extra_body={"routing": ONLY_51B})
    return json.loads(raw.headers["x-switchboard-route"])["predicted_quality"]


def test_the_gateway_routes_on_the_conversation(client):
    bare = predicted(client, [{"role": "user", "content": QUESTION}])
    assert predicted(client, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]) != bare
    # An assistant turn alone adds nothing the router reads.
    assert predicted(client, [{"role": "assistant", "content": "Hello! Ask me anything."},
                              {"role": "user", "content": QUESTION}]) == bare
