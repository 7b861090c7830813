"""OpenAI's Responses API (`client.responses`) through the gateway, judged by the official Python and Node clients:
the recording upstream must receive the equivalent chat completion, and each client must end up with the Response
(whole, as raw stream events, and through its stream helper) that the upstream's chat answer means."""

from __future__ import annotations

import inspect
from typing import Any

import httpx
import openai
import pydantic
import pytest

from switchboard.testing.canned_upstream import Canned

from .cases import EXPERT, LOGPROBS, STREAMED_TOOL_CALLS, TOOL_CALLS, UPSTREAM_MODEL, _chunks, _completion, _delta, _message
from .conftest import node_case

CLIENTS = ("python", "node")
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": True,
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}},
         {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}]
CHAT_TOOLS = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in TOOLS]
USAGE = {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 16}, "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 12},
         "total_tokens": 80}


def run(client: str, request, endpoint: str, params: dict[str, Any], base: str, api_key: str = "unused") -> dict[str, Any]:
    if client == "python":
        return run_python(base + "/v1", endpoint, params, api_key)
    spec = {"baseURL": base + "/v1", "apiKey": api_key, "maxRetries": 0, "endpoint": endpoint, "params": params}
    return node_case(request.getfixturevalue("node"), spec)


def run_python(base_url: str, endpoint: str, params: dict[str, Any], api_key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60, http_client=httpx.Client()) as client:
        try:
            if endpoint == "responses_stored":
                created = client.responses.create(**params)
                retrieved = client.responses.retrieve(created.id)
                items = [item.to_dict() for item in client.responses.input_items.list(created.id)]
                client.responses.delete(created.id)
                out["body"] = {"created": created.to_dict(), "retrieved": retrieved.to_dict(), "items": items}
                client.responses.retrieve(created.id)
            elif endpoint == "responses_stream":
                with client.responses.stream(**params) as stream:
                    out["chunks"] = [event.to_dict(warnings=False) for event in stream]  # the SDK's parsed types warn on their own dump
                    final = stream.get_final_response()
                out["body"], out["output_text"] = final.to_dict(warnings=False), final.output_text
            elif params.get("stream"):
                out["chunks"] = [event.to_dict() for event in client.responses.create(**params)]
            else:
                known = inspect.signature(client.responses.create).parameters  # others go as the Node client sends them
                answer = client.responses.create(**{k: v for k, v in params.items() if k in known},
                                                 extra_body={k: v for k, v in params.items() if k not in known} or None)
                out["body"], out["output_text"] = answer.to_dict(), answer.output_text
        except openai.APIStatusError as exc:
            out["error"] = {"class": type(exc).__name__, "status": exc.status_code, "message": exc.message}
    return out


def serve(upstream, *answers: Canned) -> Any:
    recording, _ = upstream
    recording.clear()
    for answer in answers:
        recording.queue("/chat/completions", answer)
    return recording


def _events(result: dict[str, Any]) -> list[dict[str, Any]]:
    events = result["chunks"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


@pytest.mark.parametrize("client", CLIENTS)
def test_text_whole(client, request, upstream, gateway):
    recording = serve(upstream, _completion({"index": 0, "message": _message("Sunny, 21 °C."), "logprobs": None, "finish_reason": "stop"}))
    params = {"model": EXPERT, "input": "Weather in Paris?", "instructions": "Be brief.", "max_output_tokens": 40, "temperature": 0.2,
              "metadata": {"app": "conformance"}, "user": "u-1"}
    result = run(client, request, "responses", params, gateway)
    assert recording.last.path.endswith("/chat/completions")
    assert recording.last.body == {"model": UPSTREAM_MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                                                         {"role": "user", "content": "Weather in Paris?"}],
                                   "max_completion_tokens": 40, "temperature": 0.2, "user": "u-1"}
    body = result["body"]
    assert result["output_text"] == "Sunny, 21 °C."
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    assert body["model"] == EXPERT and body["usage"] == USAGE and body["metadata"] == {"app": "conformance"}
    assert body["instructions"] == "Be brief." and body["max_output_tokens"] == 40 and body["temperature"] == 0.2
    [item] = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "output_text", "text": "Sunny, 21 °C.", "annotations": []}]


@pytest.mark.parametrize("client", CLIENTS)
def test_parallel_function_calls_whole(client, request, upstream, gateway):
    recording = serve(upstream, _completion({"index": 0, "message": _message(None, tool_calls=TOOL_CALLS), "logprobs": None,
                                             "finish_reason": "tool_calls"}))
    params = {"model": EXPERT, "input": "Weather and time in Paris?", "tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": True}
    result = run(client, request, "responses", params, gateway)
    sent = recording.last.body
    assert sent["tools"] == CHAT_TOOLS and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is True
    calls = result["body"]["output"]
    assert [(c["type"], c["call_id"], c["name"], c["arguments"], c["status"]) for c in calls] == [
        ("function_call", "call_1", "get_weather", "{\"city\":\"Paris\"}", "completed"),
        ("function_call", "call_2", "get_time", "{\"tz\":\"CET\"}", "completed")]
    assert result["body"]["status"] == "completed" and result["body"]["tools"] == TOOLS and result["output_text"] == ""


@pytest.mark.parametrize("client", CLIENTS)
def test_function_call_round_trip_becomes_the_chat_history(client, request, upstream, gateway):
    """The second turn of a tool loop as the SDKs' docs write it: the first answer's items, then each call's output."""
    recording = serve(upstream, _completion({"index": 0, "message": _message("Sunny; it is noon."), "logprobs": None, "finish_reason": "stop"}))
    history = [{"role": "user", "content": [{"type": "input_text", "text": "Weather and time in Paris?"}]},
               {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
               {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "get_time", "arguments": "{\"tz\":\"CET\"}"},
               {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
               {"type": "function_call_output", "call_id": "call_2", "output": "12:00"}]
    result = run(client, request, "responses", {"model": EXPERT, "input": history, "tools": TOOLS}, gateway)
    assert result["output_text"] == "Sunny; it is noon."
    assert recording.last.body["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},  # one text part: the string it is
        {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "12:00"}]


@pytest.mark.parametrize("client", CLIENTS)
def test_parallel_function_calls_streamed(client, request, upstream, gateway):
    recording = serve(upstream, STREAMED_TOOL_CALLS)
    result = run(client, request, "responses", {"model": EXPERT, "input": "Weather and time in Paris?", "tools": TOOLS, "stream": True}, gateway)
    assert recording.last.body["stream"] is True and recording.last.body["stream_options"] == {"include_usage": True}
    events = _events(result)
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress",
                     "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done",
                     "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    assert events[5]["arguments"] == "{\"city\":\"Paris\"}" and events[5]["name"] == "get_weather"
    final = events[-1]["response"]
    assert [(c["call_id"], c["name"], c["arguments"]) for c in final["output"]] == [("call_1", "get_weather", "{\"city\":\"Paris\"}"),
                                                                                     ("call_2", "get_time", "{\"tz\":\"CET\"}")]
    assert final["usage"] == USAGE and final["status"] == "completed"
    assert events[0]["response"]["id"] == final["id"] and events[0]["response"]["status"] == "in_progress"


@pytest.mark.parametrize("client", CLIENTS)
def test_text_through_the_stream_helper(client, request, upstream, gateway):
    """The clients' own stream helpers (`responses.stream`) accumulate the events into their final Response."""
    serve(upstream, _chunks(_delta({"role": "assistant", "content": ""}), _delta({"content": "Sun"}), _delta({"content": "ny."}),
                            _delta({}, "stop")))
    result = run(client, request, "responses_stream", {"model": EXPERT, "input": "Weather in Paris?"}, gateway)
    assert "error" not in result, result.get("error")
    assert result["output_text"] == "Sunny." and result["body"]["status"] == "completed" and result["body"]["usage"] == USAGE
    deltas = [e["delta"] for e in result["chunks"] if e["type"] == "response.output_text.delta"]
    assert deltas == ["Sun", "ny."]
    done = [e for e in result["chunks"] if e["type"] == "response.output_text.done"]
    assert [e["text"] for e in done] == ["Sunny."]


@pytest.mark.parametrize("client", CLIENTS)
def test_cut_short_is_incomplete(client, request, upstream, gateway):
    serve(upstream, _completion({"index": 0, "message": _message("Sunny and"), "logprobs": None, "finish_reason": "length"}))
    result = run(client, request, "responses", {"model": EXPERT, "input": "Weather?", "max_output_tokens": 16}, gateway)
    body = result["body"]
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and result["output_text"] == "Sunny and"


@pytest.mark.parametrize("client", CLIENTS)
def test_logprobs_included(client, request, upstream, gateway):
    recording = serve(upstream, _completion({"index": 0, "message": _message("Hi"), "logprobs": LOGPROBS, "finish_reason": "stop"}))
    result = run(client, request, "responses", {"model": EXPERT, "input": "Hi", "include": ["message.output_text.logprobs"], "top_logprobs": 2},
                 gateway)
    assert recording.last.body["logprobs"] is True and recording.last.body["top_logprobs"] == 2
    [part] = result["body"]["output"][0]["content"]
    assert part["logprobs"] == [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}, {"token": "Hello", "logprob": -2.3, "bytes": [72, 101, 108, 108, 111]}]}]


def test_parse_with_a_pydantic_model(upstream, gateway):
    """`responses.parse(text_format=...)`: the schema reaches the upstream as the chat `response_format`, and the
    client parses the answer into the model."""
    class City(pydantic.BaseModel):
        city: str
        population: int

    recording = serve(upstream, _completion({"index": 0, "message": _message("{\"city\":\"Paris\",\"population\":2100000}"), "logprobs": None,
                                             "finish_reason": "stop"}))
    with openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0) as client:
        parsed = client.responses.parse(model=EXPERT, input="The capital of France?", text_format=City)
    assert parsed.output_parsed == City(city="Paris", population=2_100_000)
    sent = recording.last.body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "City" and sent["json_schema"]["strict"] is True
    assert set(sent["json_schema"]["schema"]["properties"]) == {"city", "population"}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("params, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"background": True}, "background"),
    ({"no_such_field": 1}, "no_such_field"),
])
def test_what_cannot_be_served_is_a_400_naming_it(client, request, upstream, gateway, params, param):
    recording = serve(upstream)
    result = run(client, request, "responses", {"model": EXPERT, "input": "Hi", **params}, gateway)
    assert (result["error"]["class"], result["error"]["status"]) == ("BadRequestError", 400)
    assert recording.requests == []
    raw = httpx.post(gateway + "/v1/responses", json={"model": EXPERT, "input": "Hi", **params})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == param


@pytest.mark.parametrize("client", CLIENTS)
def test_an_upstream_refusal_is_the_clients_error(client, request, upstream, gateway):
    serve(upstream, Canned(400, {"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error",
                                           "param": "messages", "code": "context_length_exceeded"}}))
    result = run(client, request, "responses", {"model": EXPERT, "input": "Hi"}, gateway)
    assert (result["error"]["class"], result["error"]["status"]) == ("BadRequestError", 400)
    assert "maximum context length" in result["error"]["message"]


@pytest.mark.parametrize("client", CLIENTS)
def test_api_keys_guard_it_like_every_v1_endpoint(client, request, upstream, keyed_gateway):
    recording = serve(upstream)
    result = run(client, request, "responses", {"model": EXPERT, "input": "Hi"}, keyed_gateway, api_key="sk-sb-not-a-key")
    assert (result["error"]["class"], result["error"]["status"]) == ("AuthenticationError", 401)
    assert recording.requests == []


@pytest.mark.parametrize("client", CLIENTS)
def test_stored_responses_are_retrieved_listed_and_deleted(client, request, upstream, storing_gateway):
    serve(upstream, _completion({"index": 0, "message": _message("Sunny."), "logprobs": None, "finish_reason": "stop"}))
    result = run(client, request, "responses_stored", {"model": EXPERT, "input": "Weather in Paris?", "instructions": "Be brief."},
                 storing_gateway)
    assert (result["error"]["class"], result["error"]["status"]) == ("NotFoundError", 404)  # retrieved after its deletion
    body = result["body"]
    assert body["created"]["store"] is True and body["retrieved"] == body["created"]
    [item] = body["items"]
    assert item["type"] == "message" and item["role"] == "user" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "input_text", "text": "Weather in Paris?"}]
