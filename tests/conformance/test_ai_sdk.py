"""The Vercel AI SDK (`ai` with its OpenAI provider, `@ai-sdk/openai`, pinned in tests/conformance/node), the most
used TypeScript framework for LLM apps, against the real SmolLM2 expert and the local embedding model: text whole
and streamed over the provider's three APIs (its default, the Responses API; chat; legacy completions); tool calls
forced, whole and streamed, which the SDK parses, validates with zod and runs; a two-step tool loop; structured
output checked against a zod schema; embeddings. Each case must end without an error: the SDK validates every
answer and stream part against its own schemas of OpenAI's API."""

from __future__ import annotations

import json
import subprocess

import pytest

from switchboard.testing.servers import serve_smol_gateway

from .conftest import NODE_DIR

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def results(node):
    with serve_smol_gateway(context_tokens=2048) as url:
        done = subprocess.run([node, str(NODE_DIR / "ai_sdk.mjs"), url, "smol", "all-minilm-l6-v2"], capture_output=True, text=True, timeout=600,
                              cwd=NODE_DIR)
    assert done.returncode == 0, f"node failed ({done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


CASES = ["responsesText", "chatText", "completionText", "responsesStream", "chatStream", "chatToolRequired", "responsesToolRequired",
         "chatToolNamedStream", "responsesToolStream", "chatTwoSteps", "responsesTwoSteps", "responsesObject", "chatObject", "embeddings"]


@pytest.mark.parametrize("case", CASES)
def test_each_case_ends_without_an_error(results, case):
    assert "error" not in results[case], results[case]


def test_text_and_usage(results):
    for case in ("responsesText", "chatText", "completionText"):
        assert results[case]["result"]["text"].strip()
    chat = results["chatText"]["result"]
    assert 0 < chat["usage"]["outputTokens"] <= 24 and chat["finishReason"] in ("stop", "length")
    assert results["responsesText"]["result"]["usage"]["inputTokens"] > 0
    for case in ("responsesStream", "chatStream"):
        streamed = results[case]["result"]
        assert streamed["text"].strip() and streamed["parts"][0] == "start" and streamed["parts"][-1] == "finish"
        assert "text-delta" in streamed["parts"] and streamed["usage"]["outputTokens"] > 0


def test_tool_calls_are_parsed_validated_and_run(results):
    for case in ("chatToolRequired", "responsesToolRequired"):
        [call] = results[case]["result"]["toolCalls"][:1]
        assert call["toolName"] == "weather" and isinstance(call["input"]["city"], str)
        assert results[case]["result"]["toolResults"][0]["output"].startswith("18 C and sunny in")
    for case in ("chatToolNamedStream", "responsesToolStream"):
        streamed = results[case]["result"]
        assert "tool-input-delta" in streamed["parts"] and "tool-call" in streamed["parts"] and "tool-result" in streamed["parts"]
        assert streamed["toolCalls"][0]["toolName"] == "weather"
    for case in ("chatTwoSteps", "responsesTwoSteps"):
        assert results[case]["result"]["steps"] == 2 and results[case]["result"]["finishReasons"][0] == "tool-calls"
    assert results["called"] and all(isinstance(city, str) for city in results["called"])


def test_structured_output_and_embeddings(results):
    for case in ("responsesObject", "chatObject"):
        city = results[case]["result"]
        assert set(city) == {"name", "country"} and all(isinstance(v, str) for v in city.values())
    assert results["embeddings"]["result"] == [384, 384]
