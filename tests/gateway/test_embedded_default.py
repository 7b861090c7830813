"""The embedded default, as a new user meets it: `switchboard serve` with no config, then the openai client
against the real SmolLM2-135M model on this CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from switchboard.testing.servers import free_port

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def served_default():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "switchboard.cli", "serve", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                fleet = httpx.get(url + "/admin/fleet", timeout=2).json()
                states = {e["id"]: [r["state"] for r in e["replicas"]] for e in fleet["experts"]}
                if states.get("smollm2-135m") == ["warm"]:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "switchboard serve exited during start-up"
            assert time.monotonic() < deadline, "the embedded default did not come up within 120 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_real_model_answers_through_the_openai_client(served_default):
    client = openai.OpenAI(base_url=served_default + "/v1", api_key="unused", max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=8, temperature=0
    )
    answer = raw.parse()
    assert answer.choices[0].message.content.strip()
    assert not answer.choices[0].message.content.startswith("[simulated")
    assert 0 < answer.usage.completion_tokens <= 8
    assert answer.usage.prompt_tokens > 5
    assert raw.headers["x-switchboard-expert"] == "smollm2-135m"

    stream = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage.completion_tokens <= 6


def test_default_auto_and_context_errors(served_default):
    client = openai.OpenAI(base_url=served_default + "/v1", api_key="unused", max_retries=0, timeout=120)
    ids = {m.id for m in client.models.list()}
    assert {"auto", "smollm2-135m", "llama-3.1-8b-instruct"} <= ids
    with pytest.raises(openai.BadRequestError, match="context"):
        # " hello" is one token of SmolLM2's vocabulary: 2,100 of them (counted exactly) overflow its 2,048.
        client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "hello " * 2100}], max_tokens=4)
    completion = client.completions.create(model="smollm2-135m", prompt="The sky is", max_tokens=4, temperature=0)
    assert completion.choices[0].text


def test_prefix_cache_hits_are_reported_as_cached_tokens(served_default):
    """llama-cpp-python reuses the KV cache for the prompt prefix it shares with the previous request; the
    answer reports those tokens as OpenAI's `usage.prompt_tokens_details.cached_tokens`."""
    client = openai.OpenAI(base_url=served_default + "/v1", api_key="unused", max_retries=0, timeout=120)

    def chat(content: str):
        return client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": content}], max_tokens=2, temperature=0
        ).usage

    chat("Name a colour.")
    usage = chat("Explain photosynthesis briefly.")
    # SmolLM2's chat template puts the same system prompt and `<|im_start|>user\n` (24 tokens) before every
    # user message; the rest of the prompt differs from the previous one.
    assert usage.prompt_tokens_details.cached_tokens == 24
    again = chat("Explain photosynthesis briefly.")  # the same prompt: all but the last token (re-evaluated)
    assert again.prompt_tokens_details.cached_tokens == again.prompt_tokens - 1
    completion = client.completions.create(model="smollm2-135m", prompt="The sky is", max_tokens=2, temperature=0)
    assert completion.usage.prompt_tokens_details.cached_tokens == 0  # shares no prefix with the chat prompt
