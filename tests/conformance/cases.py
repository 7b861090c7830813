"""The conformance cases: what a client sends (the same JSON for the Python and the Node client), what the
recording upstream answers, and what the client must end up with. Every answer carries the fields real apps
read (tool calls, several choices, logprobs, `system_fingerprint`, `service_tier`, usage details) and one no
gateway knows (`x_upstream`)."""

from __future__ import annotations

import base64
import dataclasses
import struct
from typing import Any

from switchboard.testing.canned_upstream import Canned

EXPERT, UPSTREAM_MODEL = "rec", "upstream-model"
EMBEDDING_EXPERT, UPSTREAM_EMBEDDING_MODEL = "rec-embed", "upstream-embed"
NEEDS_PASS_THROUGH = "needs the api helper's pass-through (issue 14 items 1-3): exact request/response relay, n>1, finish reasons, 429"
RETRY_AFTER_S = 1


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    endpoint: str  # "chat", "completions", "embeddings" or "models" (list, then retrieve params["model"])
    params: dict[str, Any]  # the client call, as JSON
    answers: tuple[Canned, ...] = ()  # the upstream's answers, in order
    max_retries: int = 0
    error: tuple[str, int] | None = None  # the client's exception class and status
    retry_after: str | None = None  # the Retry-After the client must see with its error
    reaches_upstream: bool = True
    auth: bool = False  # against the gateway with API keys on
    xfail: str | None = None

    @property
    def upstream_model(self) -> str:
        return UPSTREAM_MODEL if self.endpoint == "chat" else UPSTREAM_EMBEDDING_MODEL

    @property
    def expert(self) -> str:
        return self.params["model"]


USER = [{"role": "user", "content": "Weather and time in Paris?"}]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}},
]
USAGE = {"prompt_tokens": 50, "completion_tokens": 30, "total_tokens": 80, "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 12, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
HEAD = {"id": "chatcmpl-up", "created": 1_700_000_000, "model": UPSTREAM_MODEL, "system_fingerprint": "fp_conformance", "service_tier": "default"}
EXTRA = {"x_upstream": {"served_by": "recording-upstream"}}
LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
    {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}, {"token": "Hello", "logprob": -2.3, "bytes": [72, 101, 108, 108, 111]}]}], "refusal": None}


def _message(content: str | None, **more: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "refusal": None, **more}


def _completion(*choices: dict[str, Any]) -> Canned:
    return Canned(json={**HEAD, "object": "chat.completion", "choices": list(choices), "usage": USAGE, **EXTRA})


def _chunks(*choices: list[dict[str, Any]], usage: bool = True) -> Canned:
    head = {**HEAD, "object": "chat.completion.chunk"}
    chunks = [{**head, "choices": c} for c in choices]
    if usage:
        chunks.append({**head, "choices": [], "usage": USAGE})
    return Canned(sse=chunks)


def _delta(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]


TOOL_CALLS = [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}},
]
STREAMED_TOOL_CALLS = _chunks(  # TOOL_CALLS as an upstream streams them: the first call's arguments in pieces
    _delta({"role": "assistant", "content": None, "refusal": None}),
    _delta({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
    _delta({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
    _delta({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
    _delta({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}]}),
    _delta({}, "tool_calls"),
)
CITY_SCHEMA = {"name": "city", "strict": True, "schema": {"type": "object", "additionalProperties": False, "required": ["city", "population"],
                                                           "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}}}


def _vector_b64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def _rate_limited() -> Canned:
    return Canned(429, {"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}},
                  headers={"retry-after": str(RETRY_AFTER_S)})


CASES = [
    Case("chat_parallel_tool_calls", "chat",
         {"model": EXPERT, "messages": USER, "tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": True, "temperature": 0.2, "seed": 7,
          "user": "u-1", "metadata": {"app": "conformance"}},
         (_completion({"index": 0, "message": _message(None, tool_calls=TOOL_CALLS), "logprobs": None, "finish_reason": "tool_calls"}),),
        ),
    Case("chat_parallel_tool_calls_streamed", "chat",
         {"model": EXPERT, "messages": USER, "tools": TOOLS, "parallel_tool_calls": True, "stream": True, "stream_options": {"include_usage": True}},
         (STREAMED_TOOL_CALLS,),
        ),
    Case("chat_n_2", "chat", {"model": EXPERT, "messages": USER, "n": 2, "max_completion_tokens": 20},
         (_completion({"index": 0, "message": _message("Sunny."), "logprobs": None, "finish_reason": "stop"},
                      {"index": 1, "message": _message("Cloudy, 12:00."), "logprobs": None, "finish_reason": "length"}),),
        ),
    Case("chat_logprobs", "chat", {"model": EXPERT, "messages": USER, "logprobs": True, "top_logprobs": 2},
         (_completion({"index": 0, "message": _message("Hi"), "logprobs": LOGPROBS, "finish_reason": "stop"}),),
        ),
    Case("chat_logprobs_streamed", "chat", {"model": EXPERT, "messages": USER, "logprobs": True, "top_logprobs": 2, "stream": True},
         (_chunks(_delta({"role": "assistant", "content": ""}), _delta({"content": "Hi"}, logprobs=LOGPROBS), _delta({}, "stop"), usage=False),),
        ),
    Case("chat_json_schema", "chat", {"model": EXPERT, "messages": USER, "response_format": {"type": "json_schema", "json_schema": CITY_SCHEMA}},
         (_completion({"index": 0, "message": _message("{\"city\":\"Paris\",\"population\":2100000}"), "logprobs": None, "finish_reason": "stop"}),),
        ),
    Case("embeddings_float", "embeddings",
         {"model": EMBEDDING_EXPERT, "input": ["first text", "second text"], "encoding_format": "float", "dimensions": 3, "user": "u-1"}),
    Case("embeddings_client_default_base64", "embeddings", {"model": EMBEDDING_EXPERT, "input": "one text"},
         (Canned(json={"object": "list", "model": UPSTREAM_EMBEDDING_MODEL, "usage": {"prompt_tokens": 2, "total_tokens": 2},
                       "data": [{"object": "embedding", "index": 0, "embedding": _vector_b64([0.25, -0.5, 1.0])}], **EXTRA}),)),
    Case("error_400_bad_request", "chat", {"model": EXPERT, "messages": []}, error=("BadRequestError", 400), reaches_upstream=False),
    Case("error_404_unknown_model", "chat", {"model": "no-such-model", "messages": USER}, error=("NotFoundError", 404), reaches_upstream=False),
    Case("error_404_unknown_embedding_model", "embeddings", {"model": "no-such-model", "input": "x"}, error=("NotFoundError", 404), reaches_upstream=False),
    Case("error_401_bad_key", "chat", {"model": EXPERT, "messages": USER}, error=("AuthenticationError", 401), reaches_upstream=False, auth=True),
    Case("error_429_embeddings", "embeddings", {"model": EMBEDDING_EXPERT, "input": "x", "encoding_format": "float"}, (_rate_limited(),),
         error=("RateLimitError", 429), retry_after=str(RETRY_AFTER_S)),
    Case("retry_after_honoured_embeddings", "embeddings", {"model": EMBEDDING_EXPERT, "input": "x", "encoding_format": "float"},
         (_rate_limited(),), max_retries=1),
    Case("error_429_chat", "chat", {"model": EXPERT, "messages": USER}, (_rate_limited(),), error=("RateLimitError", 429),
         retry_after=str(RETRY_AFTER_S)),
    Case("retry_after_honoured_chat", "chat", {"model": EXPERT, "messages": USER}, (_rate_limited(),), max_retries=1),
]
