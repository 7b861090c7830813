"""logprobs from a local llama.cpp expert, as the official openai Python and Node clients read them: chat's
`choices[].logprobs.content[]` (whole and streamed) and the legacy completions' parallel lists, against the
real SmolLM2 model at temperature 0.

There is no recording upstream to compare with here (the model is the upstream), so each client's answer is
checked for what OpenAI's own answers guarantee: the tokens concatenate to the text, each token's `bytes` are its
UTF-8, `top_logprobs` has the asked length, most likely first, and greedy decoding sampled the top one. Both
clients get the same tokens for the same request.
"""

from __future__ import annotations

from typing import Any

import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

from .cases import Case
from .test_clients import CLIENTS, run_node, run_python

pytestmark = pytest.mark.llamacpp

EXPERT = "smol"
CONFIG = f"""
experts:
  - id: {EXPERT}
    backend: {{kind: llamacpp, n_threads: 1}}
    context_tokens: 1024
    warm_at_start: true
    ttft_slo_s: 300             # a loaded test machine must not turn answers into 429s
storage: {{enabled: false}}
"""
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
NUM_TOP = 3

CASES = [
    Case("llamacpp_chat_logprobs", "chat",
         {"model": EXPERT, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": NUM_TOP}),
    Case("llamacpp_chat_logprobs_streamed", "chat",
         {"model": EXPERT, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": NUM_TOP, "stream": True,
          "stream_options": {"include_usage": True}}),
    Case("llamacpp_completion_logprobs", "completions",
         {"model": EXPERT, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": NUM_TOP}),
    Case("llamacpp_completion_logprobs_streamed", "completions",
         {"model": EXPERT, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": NUM_TOP, "stream": True}),
]


@pytest.fixture(scope="module")
def gateway():
    with serve_in_thread(build_app(parse_config(CONFIG)), startup_timeout_s=180) as base:
        yield base + "/v1"


def _chat(result: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The answer's text and its logprobs entries, from a whole answer or its chunks."""
    if "body" in result:
        choice = result["body"]["choices"][0]
        return choice["message"]["content"], choice["logprobs"]["content"]
    text, entries = "", []
    for chunk in result["chunks"]:
        for choice in chunk["choices"]:
            piece = choice["delta"].get("content") or ""
            got = (choice.get("logprobs") or {}).get("content") or []
            assert "".join(e["token"] for e in got) == piece  # each chunk carries its own tokens
            text += piece
            entries += got
    assert result["chunks"][-1]["usage"]["completion_tokens"] == len(entries)
    return text, entries


def _check_chat(result: dict[str, Any]) -> list[str]:
    text, entries = _chat(result)
    assert entries and "".join(e["token"] for e in entries) == text
    for entry in entries:
        assert entry["bytes"] == list(entry["token"].encode()) and entry["logprob"] <= 0
        top = entry["top_logprobs"]
        assert len(top) == NUM_TOP and [a["logprob"] for a in top] == sorted((a["logprob"] for a in top), reverse=True)
        assert all(a["bytes"] == list(a["token"].encode()) for a in top)
        assert (top[0]["token"], top[0]["logprob"]) == (entry["token"], entry["logprob"])
    return [e["token"] for e in entries]


def _check_completion(result: dict[str, Any]) -> list[str]:
    choices = [result["body"]["choices"][0]] if "body" in result else [c["choices"][0] for c in result["chunks"] if c["choices"]]
    text = "".join(c["text"] for c in choices)
    parts = [c["logprobs"] for c in choices if c.get("logprobs")]
    tokens = [t for p in parts for t in p["tokens"]]
    assert tokens and "".join(tokens) == text
    assert [o for p in parts for o in p["text_offset"]] == [len("".join(tokens[:i])) for i in range(len(tokens))]
    for token, logprob, top in zip(tokens, [v for p in parts for v in p["token_logprobs"]], [t for p in parts for t in p["top_logprobs"]]):
        assert NUM_TOP <= len(top) <= NUM_TOP + 1 and top[token] == logprob == max(top.values())
    return tokens


@pytest.fixture(scope="module")
def tokens_seen() -> dict[str, list[str]]:
    return {}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_logprobs_from_the_llamacpp_expert(case: Case, client: str, gateway, request, tokens_seen):
    if client == "python":
        result = run_python(gateway, "unused", case)
    else:
        result = run_node(request.getfixturevalue("node"), gateway, "unused", case)
    assert "error" not in result, result.get("error")
    assert result["sent"] == [case.params]
    tokens = _check_chat(result) if case.endpoint == "chat" else _check_completion(result)
    # The same greedy tokens for either client, whole or streamed.
    assert tokens_seen.setdefault(case.endpoint, tokens) == tokens
