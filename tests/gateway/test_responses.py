"""`POST /v1/responses`: the translation to a chat completion and back (pure parts), and the gateway serving it to
the official client: simulated experts, `auto`, and a stream that fails mid-way. (Both official clients against a
recording upstream: tests/conformance/test_responses.py; the real SmolLM2: tests/engines/test_llamacpp_fields.py.)"""

from __future__ import annotations

import json
import time

import httpx
import openai
import orjson
import pytest

from switchboard.gateway.errors import ApiError
from switchboard.gateway.responses_api.events import ResponsesStream, sse_events
from switchboard.gateway.responses_api.ids import logged_request_id, response_id_for
from switchboard.gateway.responses_api.request import parse, translate


def _parse(**body):
    return translate(parse(orjson.dumps({"model": "m", **body})))


def test_a_string_input_with_instructions_is_a_system_and_a_user_message():
    chat = _parse(input="Hi", instructions="Be brief.", max_output_tokens=9, top_p=0.5).chat
    assert chat == {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                    "max_completion_tokens": 9, "top_p": 0.5}


def test_items_become_the_chat_history():
    items = [
        {"type": "message", "role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "input_text", "text": "Look:"}, {"type": "input_image", "image_url": "data:image/png;base64,AA=="}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "42"}]},
    ]
    assert _parse(input=items).chat["messages"] == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA==",
                                                                                                            "detail": "auto"}}]},
        {"role": "assistant", "content": "Checking", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},  # one text part: the string it is
    ]


def test_formats_tools_reasoning_and_logprobs_map_to_their_chat_fields():
    chat = _parse(input="x", text={"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True}},
                  tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}], tool_choice={"type": "function", "name": "f"},
                  reasoning={"effort": "low"}, include=["message.output_text.logprobs"], top_logprobs=3, stream=True).chat
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": True}}
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["reasoning_effort"] == "low" and chat["logprobs"] is True and chat["top_logprobs"] == 3
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert _parse(input="x", text={"format": {"type": "text"}, "verbosity": "low"}).chat == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize("body, param", [
    ({"input": []}, "input"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input[0].content[0].image_url"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type"),
    ({"input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema"),
    ({"input": "x", "include": ["no.such.include"]}, "include"),
    ({"input": "x", "conversation": "conv_1", "previous_response_id": "resp_1"}, "conversation"),  # one history or the other
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "max_tool_calls": 2}, "max_tool_calls"),
    ({"input": "x", "messages": []}, "messages"),
    ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": "x", "context_management": [{"type": "compaction"}]}, "context_management"),
    ({}, "input"),
])
def test_what_has_no_chat_equivalent_is_a_400_naming_it(body, param):
    with pytest.raises(ApiError) as raised:
        _parse(**body)
    assert raised.value.status == 400 and raised.value.param == param


def test_a_responses_id_names_its_chat_requests_log_row():
    assert response_id_for("chatcmpl-ab12") == "resp_ab12" and logged_request_id("resp_ab12") == "chatcmpl-ab12"
    assert logged_request_id("chatcmpl-ab12") == "chatcmpl-ab12"


def test_sse_events_are_whole_whatever_the_chunking():
    stream = b'data: {"a":1}\n\ndata: {"b":\n\r\n: comment\n\ndata: [DONE]\n\n'
    pending, out = bytearray(), []
    for i in range(len(stream)):
        out.extend(sse_events(stream[i:i + 1], pending))
    assert out == [b'{"a":1}', b'{"b":', b"[DONE]"] and not pending
    crlf, out = b'data: {"a":1}\r\n\r\ndata: {"c":2}\r\n\r\n', []
    for i in range(len(crlf)):  # every CR in one read, its LF in the next
        out.extend(sse_events(crlf[i:i + 1], pending))
    assert out == [b'{"a":1}', b'{"c":2}'] and not pending


async def _convert(chat_chunks: list[dict], **request) -> list[dict]:
    async def chunks():
        for chunk in chat_chunks:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    stream = ResponsesStream(_parse(input="x", **request).request, "resp_1", 0, "e")
    out = b"".join([sent async for sent in stream.events(chunks())])
    assert out.endswith(b"\n\n")
    events = []
    for raw in out.removesuffix(b"\n\n").split(b"\n\n"):  # what one send holds: whole events, one or several
        head, data = raw.split(b"\n", 1)
        event = json.loads(data.removeprefix(b"data: "))
        assert head == b"event: " + event["type"].encode()
        events.append(event)
    return events


def _choice(delta: dict, finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def test_text_then_a_call_closes_the_message_before_the_call_opens():
    events = await _convert([_choice({"role": "assistant", "content": ""}), _choice({"content": "Let me check."}),
                             _choice({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\":"}}]}),
                             _choice({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}), _choice({}, "tool_calls"),
                             {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Let me check." and final["output"][1]["arguments"] == "{\"a\":1}"
    assert [i["output_index"] if "output_index" in i else None for i in events[2:4]] == [0, 0] and events[8]["output_index"] == 1
    assert final["usage"]["total_tokens"] == 7 and events[0]["response"]["usage"] is None


async def test_a_stream_cut_by_the_length_limit_is_incomplete():
    events = await _convert([_choice({"content": "Once upon"}), _choice({}, "length")], max_output_tokens=2)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


async def test_an_error_chunk_fails_the_response_and_is_an_error_event():
    events = await _convert([_choice({"content": "Once"}), {"error": {"message": "boom", "type": "server_error", "param": None, "code": "engine_error"}}])
    assert [e["type"] for e in events[-2:]] == ["response.failed", "error"]
    assert events[-2]["response"]["error"] == {"code": "engine_error", "message": "boom"}
    assert events[-1]["error"]["message"] == "boom"


async def test_an_event_that_is_no_json_object_fails_the_response_saying_so():
    async def chunks():
        yield b"data: " + orjson.dumps(_choice({"content": "Once"})) + b"\n\n"
        yield b"data: {not json\n\n"

    stream = ResponsesStream(_parse(input="x").request, "resp_1", 0, "e")
    out = b"".join([sent async for sent in stream.events(chunks())])
    assert b"event: response.failed" in out and b"event: error" in out and b"bad_upstream_response" in out


@pytest.fixture
def client(gateway_url):
    with openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_a_simulated_expert_and_auto_answer(client):
    raw = client.responses.with_raw_response.create(model="auto", input="hello", max_output_tokens=12)
    answer = raw.parse()
    assert answer.output_text == "[simulated small: 12 tokens]" and answer.status == "incomplete"
    assert answer.model == "small" == raw.headers["x-switchboard-expert"] and "reason" in raw.headers["x-switchboard-route"]
    assert answer.id == response_id_for(raw.headers["x-request-id"]) and answer.usage.output_tokens == 12
    with client.responses.stream(model="small", input=[{"role": "user", "content": "hello"}], max_output_tokens=12) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert text == "[simulated small: 12 tokens]"


def test_a_stream_that_fails_mid_way_is_raised_by_the_client(client):
    """The upstream closes after two chunks: the gateway's error chunk becomes `response.failed` and an `error`
    event, which the client raises (as it does for chat)."""
    seen = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for event in client.responses.create(model="cut", input="hello", stream=True):
            seen.append(event.type)
    assert seen[-1] == "response.failed" and "response.output_text.delta" in seen


def test_an_expert_refusing_a_field_names_it_in_responses_terms(gateway_url):
    answer = httpx.post(gateway_url + "/v1/responses", json={"model": "small", "input": "x", "top_logprobs": 2})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "top_logprobs"
    answer = httpx.post(gateway_url + "/v1/responses", json={"model": "small", "input": "x", "max_output_tokens": 100_000})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "max_output_tokens"
    answer = httpx.post(gateway_url + "/v1/responses", json={"model": "nope", "input": "x"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"


async def test_an_empty_answer_is_one_empty_message_streamed_as_whole():
    events = await _convert([_choice({"role": "assistant", "content": ""}), _choice({}, "stop")])
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
                                           "response.output_text.done", "response.content_part.done", "response.output_item.done",
                                           "response.completed"]
    assert events[-1]["response"]["output"][0]["content"] == [{"type": "output_text", "text": "", "annotations": []}]


def test_a_client_leaving_mid_stream_frees_the_replica(client, gateway_url):
    """Closing a Responses stream after its first delta closes the chat stream under it: the replica's load is
    given back (this module's gateway fixture also checks, at its end, that no replica holds load)."""
    stream = client.responses.create(model="small", input="hello", max_output_tokens=400, stream=True)
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    stream.close()

    def outstanding() -> int:
        fleet = httpx.get(gateway_url + "/admin/fleet").json()
        return sum(r["num_running"] + r["num_queued"] for e in fleet["experts"] if e["id"] == "small" for r in e["replicas"])

    deadline = time.monotonic() + 10
    while outstanding() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outstanding() == 0


def test_cancelling_is_for_background_responses_only(client):
    with pytest.raises(openai.BadRequestError, match="only background responses can be cancelled"):
        client.responses.cancel("resp_123")


def test_includes_about_items_never_produced_here_change_nothing():
    plain = _parse(input="x").chat
    assert _parse(input="x", include=["reasoning.encrypted_content", "file_search_call.results"]).chat == plain
    assert _parse(input="x", prompt_cache_retention="24h", prompt_cache_options={"ttl": "24h"}).chat == plain
    # The cache key and the end user's id go on: the key routes (gateway/affinity.py), the id describes the request.
    assert _parse(input="x", prompt_cache_key="k", safety_identifier="u").chat == {**plain, "prompt_cache_key": "k", "safety_identifier": "u"}


def test_every_parameter_of_the_official_clients_create_is_handled():
    """Each parameter the pinned openai package's `responses.create` can send is a field here — served, accepted as
    a hint, or refused by name — never an anonymous 'unrecognized argument' (an upgrade adding one fails here)."""
    import inspect

    from openai.resources.responses.responses import Responses

    from switchboard.gateway.responses_api.schemas import ResponsesRequest

    sent = set(inspect.signature(Responses.create).parameters) - {"self", "extra_headers", "extra_query", "extra_body", "timeout"}
    assert sent - set(ResponsesRequest.model_fields) == set()


def test_input_tokens_are_counted_for_the_named_expert(client, gateway_url):
    """`responses.input_tokens.count`: a simulated expert's count is the gateway's estimate, and says so (a llama.cpp
    expert's is exact: tests/engines/test_llamacpp_fields.py); `auto` and unknown experts are refused."""
    raw = client.responses.input_tokens.with_raw_response.count(model="small", input="What is the capital of France?", instructions="Be brief.")
    counted = raw.parse()
    assert counted.object == "response.input_tokens" and raw.headers["x-switchboard-token-count"] == "estimate"
    from switchboard.gateway.responses_api.request import estimate_chat_tokens

    conversation = {"model": "small", "messages": [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "What is the capital of France?"}]}
    assert counted.input_tokens == estimate_chat_tokens(conversation) > estimate_chat_tokens({**conversation, "messages": conversation["messages"][1:]})
    with pytest.raises(openai.BadRequestError, match="name the expert"):
        client.responses.input_tokens.count(model="auto", input="x")
    with pytest.raises(openai.NotFoundError):
        client.responses.input_tokens.count(model="nope", input="x")
