"""The official Node client's tool loop (`chat.completions.runTools`, whole and streamed), and its zod parse helpers
(a zod response format, a zod tool), against the real SmolLM2 expert, whose calls a grammar makes well-formed (engines/llamacpp/tools.py): the SDK parses each call's
arguments, runs its local function with them, sends the result back as a `tool` message, and stops after the named
call. The Python client's helpers on the same engine: tests/engines/test_llamacpp_tools.py."""

from __future__ import annotations

import json

import pytest

from switchboard.testing.servers import serve_smol_gateway

from .conftest import node_case

pytestmark = pytest.mark.llamacpp

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                                                            "required": ["city"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def smol_gateway():
    with serve_smol_gateway(context_tokens=2048) as url:
        yield url


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_node_run_tools_calls_the_local_function_with_the_parsed_arguments(node, smol_gateway, stream):
    params = {"model": "smol", "messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": [WEATHER],
              "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "max_tokens": 60, "temperature": 0,
              **({"stream": True} if stream else {})}
    spec = {"baseURL": smol_gateway, "apiKey": "unused", "maxRetries": 0, "endpoint": "chat_run_tools", "params": params,
            "toolResult": "18 C and sunny"}
    out = node_case(node, spec, 300)
    assert "error" not in out, out.get("error")
    (called,) = out["called"]
    assert called["name"] == "get_weather" and isinstance(called["args"]["city"], str)  # JSON.parse of the call's arguments
    (call,) = out["body"]["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == called["args"]
    assert out["messages"][-1] == {"role": "tool", "tool_call_id": call["id"], "content": "18 C and sunny"}


def test_node_parse_with_zod_schemas(node, smol_gateway):
    params = {"model": "smol", "messages": [{"role": "user", "content": "Paris: its name and population, please."}], "max_tokens": 80,
              "temperature": 0}
    spec = {"baseURL": smol_gateway, "apiKey": "unused", "maxRetries": 0, "endpoint": "chat_parse_zod", "params": params}
    out = node_case(node, spec, 300)
    assert "error" not in out, out.get("error")
    parsed = out["body"]["parsed"]  # zod validated it in the SDK: the grammar made it match
    assert isinstance(parsed["city"], str) and isinstance(parsed["population"], int) and out["body"]["finish"] == "stop"
    assert out["body"]["calls"] and all(c["name"] == "get_weather" and isinstance(c["parsed"]["city"], str) for c in out["body"]["calls"])
