"""Pass-through fidelity for `openai` experts (issue 14, item 1), tested field by field with the official openai
client against a recording upstream: every field the client sends reaches the upstream unchanged (but
`model`), and every field and header the upstream answers comes back unchanged (but `model`), streamed and
not — several choices, logprobs, refusal, tool calls, finish reasons, system_fingerprint, service_tier, usage
details, and fields neither side of the gateway knows."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.recording import FINGERPRINT, SNAPSHOT_SUFFIX, RecordingUpstream
from switchboard.testing.servers import serve_in_thread

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def upstream():
    return RecordingUpstream()


@pytest.fixture(scope="module")
def gateway_url(upstream):
    with serve_in_thread(upstream) as upstream_base:
        config = parse_config(f"""
experts:
  - id: gpt
    backend: {{kind: openai, base_url: "{upstream_base}/v1", model: gpt-4o-mini}}
  - id: careful
    backend: {{kind: openai, base_url: "{upstream_base}/v1", model: gpt-filtered}}
  - id: small
    backend: {{kind: simulated, time_scale: 0}}
""")
        with serve_in_thread(build_app(config)) as url:
            yield url


class Sent:
    """The bytes the openai client put on the wire, and the bytes it got back."""

    def __init__(self) -> None:
        self.body: dict | None = None

    def hook(self, request: httpx.Request) -> None:
        self.body = json.loads(request.content)


@pytest.fixture
def sent():
    return Sent()


@pytest.fixture
def client(gateway_url, sent):
    http = httpx.Client(event_hooks={"request": [sent.hook]}, timeout=30)
    with openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0, http_client=http) as c:
        yield c


# Everything the official client can send for a chat, and a field nobody here knows (extra_body).
RICH = dict(
    messages=MESSAGES, temperature=0.25, top_p=0.9, n=2, seed=7, stop=["\n\n"], presence_penalty=0.5, frequency_penalty=-0.25,
    logit_bias={"50256": -100}, logprobs=True, top_logprobs=3, user="u-42", metadata={"app": "tests"}, store=False,
    service_tier="auto", max_completion_tokens=64, tools=TOOLS, tool_choice="auto", parallel_tool_calls=True,
    extra_body={"vendor_knob": {"depth": 3, "ratio": 0.125}, "guided_choice": ["a", "b"]},
)


def _as_sent_but_model(sent_body: dict, upstream_model: str) -> dict:
    return {**sent_body, "model": upstream_model}


def test_every_request_field_reaches_the_upstream_unchanged_and_the_answer_comes_back_unchanged(client, upstream, sent):
    raw = client.chat.completions.with_raw_response.create(model="gpt", **RICH)
    assert upstream.last.json == _as_sent_but_model(sent.body, "gpt-4o-mini")
    assert upstream.last.path == "/v1/chat/completions"
    # The answer: the upstream's bytes, but `model` (its dated snapshot name) is the expert id.
    upstream_answer = json.loads(upstream.responses[-1])
    assert upstream_answer["model"] == "gpt-4o-mini" + SNAPSHOT_SUFFIX
    assert json.loads(raw.http_response.content) == {**upstream_answer, "model": "gpt"}
    answer = raw.parse()
    assert answer.system_fingerprint == FINGERPRINT and answer.service_tier == "default"
    assert [c.index for c in answer.choices] == [0, 1]
    assert {c.finish_reason for c in answer.choices} == {"tool_calls"}
    calls = answer.choices[1].message.tool_calls
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_0", "get_weather", {"city": "Paris0"}), ("call_1", "get_time", {"city": "Paris1"})]
    assert answer.choices[0].logprobs.content[0].top_logprobs[2].token == "alt1"
    assert answer.usage.completion_tokens_details.reasoning_tokens == 2
    assert answer.usage.prompt_tokens_details.cached_tokens == 3
    # The upstream's headers come back; its request id under our name for it (x-request-id is ours).
    assert raw.headers["x-ratelimit-remaining-requests"] == "4999" and raw.headers["openai-processing-ms"] == "7"
    assert raw.headers["x-switchboard-upstream-request-id"] == "req_upstream_123"
    assert raw.headers["x-request-id"].startswith("chatcmpl-") and raw.headers["x-switchboard-expert"] == "gpt"


def test_json_schema_and_refusal_fields_pass_both_ways(client, upstream, sent):
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True,
                                                     "schema": {"type": "object", "properties": {"answer": {"type": "integer"}},
                                                                "required": ["answer"], "additionalProperties": False}}}
    answer = client.chat.completions.create(model="gpt", messages=MESSAGES, response_format=schema, reasoning_effort="low")
    assert upstream.last.json == _as_sent_but_model(sent.body, "gpt-4o-mini")
    assert json.loads(answer.choices[0].message.content) == {"answer": 42}
    assert answer.choices[0].message.refusal is None and answer.choices[0].message.annotations == []


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_stream_is_the_upstreams_own_bytes_with_tool_calls_finish_reasons_and_usage(client, upstream, sent, include_usage):
    options = {"include_usage": True} if include_usage else None
    body = dict(RICH, stream=True, **({"stream_options": options} if options else {}))
    with client.chat.completions.with_streaming_response.create(model="gpt", **body) as raw:
        streamed = raw.read()
    received = upstream.last.json
    expected_up = _as_sent_but_model(sent.body, "gpt-4o-mini")
    if not include_usage:  # the one field the gateway adds: it meters by the upstream's usage
        expected_up["stream_options"] = {"include_usage": True}
    assert received == expected_up
    relayed = upstream.responses[-1].replace(b'"model":"gpt-4o-mini' + SNAPSHOT_SUFFIX.encode() + b'"', b'"model":"gpt"')
    if include_usage:
        assert streamed == relayed  # byte for byte
    else:
        events = [json.loads(line[6:]) for line in relayed.split(b"\n\n") if line.startswith(b"data: {")]
        expected = [{k: v for k, v in e.items() if k != "usage"} for e in events if e["choices"]]
        got = [json.loads(line[6:]) for line in streamed.split(b"\n\n") if line.startswith(b"data: {")]
        assert got == expected and streamed.endswith(b"data: [DONE]\n\n")


def test_the_openai_client_reads_streamed_tool_calls_and_their_finish_reason(client):
    chunks = list(client.chat.completions.create(model="gpt", messages=MESSAGES, tools=TOOLS, stream=True, stream_options={"include_usage": True}))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    arguments = "".join(tc.function.arguments or "" for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or ()) if tc.index == 1)
    assert json.loads(arguments) == {"city": "Paris1"}
    assert {c.model for c in chunks} == {"gpt"} and chunks[-1].usage.completion_tokens_details.reasoning_tokens == 2
    assert {c.system_fingerprint for c in chunks} == {FINGERPRINT}


@pytest.mark.parametrize("stream", [False, True])
def test_content_filter_is_the_engines_truth(client, stream):
    if stream:
        chunks = list(client.chat.completions.create(model="careful", messages=MESSAGES, stream=True))
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["content_filter"]
    else:
        assert client.chat.completions.create(model="careful", messages=MESSAGES).choices[0].finish_reason == "content_filter"


def test_legacy_completions_pass_through_too(client, upstream, sent):
    answer = client.completions.create(model="gpt", prompt="Say hi", n=2, best_of=3, echo=False, suffix="!", extra_body={"vendor_knob": 1})
    assert upstream.last.json == _as_sent_but_model(sent.body, "gpt-4o-mini") and upstream.last.path == "/v1/completions"
    assert [c.index for c in answer.choices] == [0, 1] and answer.model == "gpt" and answer.system_fingerprint == FINGERPRINT


@pytest.mark.parametrize(("field", "value"), [("top_logprobs", 2), ("logprobs", True), ("tools", TOOLS), ("vendor_knob", 1),
                                              ("response_format", {"type": "json_object"})])
def test_a_local_engine_answers_a_clear_400_naming_what_it_cannot_do(client, field, value):
    kwargs = {field: value} if field != "vendor_knob" else {"extra_body": {field: value}}
    with pytest.raises(openai.BadRequestError) as failed:
        client.chat.completions.create(model="small", messages=MESSAGES, **kwargs)
    error = failed.value.body
    assert error["param"] == field and "'small'" in error["message"] and error["code"] == "unsupported_parameter"


async def test_the_relay_finishes_a_stream_whose_last_line_has_no_newline_and_refuses_one_without_done():
    from switchboard.engines.base import EngineBadResponse, Finish, GenerationRequest, RawChunk
    from switchboard.engines.openai_upstream import OpenAIUpstreamEngine

    line = b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"up","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'

    async def terse(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        ends_well = b'"good"' in body
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": line + (b"data: [DONE]" if ends_well else b"data: {\"id\"")})

    with serve_in_thread(terse) as base:
        for model, ends_well in (("good", True), ("bad", False)):
            engine = OpenAIUpstreamEngine("e", base + "/v1", model)
            request = GenerationRequest("r", "chat", {"model": "e", "messages": MESSAGES, "stream": True}, 8, 3)
            try:
                if ends_well:
                    events = [event async for event in engine.stream(request)]
                    relayed = b"".join(e.data for e in events if isinstance(e, RawChunk))
                    assert relayed.endswith(b"data: [DONE]\n\n") and b'"model":"e"' in relayed
                    assert isinstance(events[-1], Finish) and events[-1].reason.value == "stop"
                else:
                    with pytest.raises(EngineBadResponse, match="without \\[DONE\\]"):
                        _ = [event async for event in engine.stream(request)]
            finally:
                await engine.stop()


async def test_an_upstream_error_event_is_the_engines_error_not_relayed_as_data():
    from switchboard.engines.base import EngineBadResponse, GenerationRequest
    from switchboard.engines.openai_upstream import OpenAIUpstreamEngine

    async def failing(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'data: {"error": {"message": "the upstream fell over", "type": "server_error"}}\n\n'})

    with serve_in_thread(failing) as base:
        engine = OpenAIUpstreamEngine("e", base + "/v1", "up")
        try:
            with pytest.raises(EngineBadResponse, match="the upstream fell over"):
                _ = [event async for event in engine.stream(GenerationRequest("r", "chat", {"model": "e", "messages": MESSAGES, "stream": True}, 8, 3))]
        finally:
            await engine.stop()


def test_a_relayed_stream_is_logged_before_the_client_sees_its_done(upstream, tmp_path, slow_lease_release):
    """The upstream's own `[DONE]` reaches the client only after the request's row is queued: a client that scores
    the answer the moment its stream ends finds it (201, not 404), however long the gateway then takes to wind the
    stream down — here its lease's release is held 0.5 s."""
    with serve_in_thread(upstream) as upstream_base:
        config = parse_config(f"""
experts:
  - id: gpt
    backend: {{kind: openai, base_url: "{upstream_base}/v1", model: gpt-4o-mini}}
storage: {{url: "sqlite:///{tmp_path / 'requests.db'}", flush_interval_s: 0.05}}
""")
        with serve_in_thread(build_app(config)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
            for _ in range(2):
                raw = client.chat.completions.with_raw_response.create(model="gpt", messages=MESSAGES, stream=True)
                chunks = list(raw.parse())
                assert chunks and any(c.choices and c.choices[0].finish_reason for c in chunks)
                scored = httpx.post(url + "/v1/feedback", json={"request_id": raw.headers["x-request-id"], "score": 1.0}, timeout=30)
                assert scored.status_code == 201, scored.text


def test_a_keys_rate_limit_headers_replace_the_upstreams(upstream, tmp_path):
    """Through an `openai` expert the upstream's `x-ratelimit-*` (the gateway's own account there) come back to a
    caller without limits; a key with `rpm` gets its own, once each, not the upstream's beside them."""
    from switchboard.storage import database
    from switchboard.tenants.keys import KeyLimits
    from switchboard.tenants.store import create_key

    db = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = database.open_engine(db)
    database.migrate(engine)
    limited, unlimited = (create_key(engine, name, "acme", limits)[1] for name, limits in (("limited", KeyLimits(rpm=10)), ("open", KeyLimits())))
    engine.dispose()
    with serve_in_thread(upstream) as upstream_base:
        config = parse_config(f'experts: [{{id: gpt, backend: {{kind: openai, base_url: "{upstream_base}/v1", model: gpt-4o-mini}}}}]\n'
                              f'storage: {{url: "{db}"}}\nauth: {{enabled: true}}')
        with serve_in_thread(build_app(config, environ={"SWITCHBOARD_ADMIN_KEY": "admin-" + "k" * 40})) as url:
            def headers(key: str) -> httpx.Headers:
                return httpx.post(url + "/v1/chat/completions", json={"model": "gpt", "messages": MESSAGES},
                                  headers={"authorization": f"Bearer {key}"}).headers
            assert headers(unlimited)["x-ratelimit-remaining-requests"] == "4999"
            mine = headers(limited)
            assert mine.get_list("x-ratelimit-remaining-requests") == ["9"] and mine["x-ratelimit-limit-requests"] == "10"
