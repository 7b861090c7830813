"""A recording OpenAI-compatible upstream for fidelity tests: it keeps every request exactly as it arrived and
answers with the fields real apps read, in OpenAI's shapes, so a test can check field by field that the gateway
changed nothing on the way up or down.

What it answers follows the request, as OpenAI's API does:

- `n` choices; `logprobs`/`top_logprobs` get per-token logprobs; `response_format` json_object/json_schema
  gets JSON content;
- `tools` get tool calls (two, in parallel, unless `parallel_tool_calls` is false) and `finish_reason:
  "tool_calls"`; a model named `*filtered*` ends with `content_filter`, one named `*refuses*` sets `refusal`;
- every answer has `system_fingerprint`, `service_tier`, `usage` with `prompt_tokens_details` and
  `completion_tokens_details` (reasoning tokens), and the model as a dated snapshot (`<model>-2024-07-18`);
- streams are OpenAI's: a role chunk, content (or tool-call argument) deltas, one finish chunk per choice,
  `"usage": null` on every chunk and a usage chunk when `stream_options.include_usage`, then `[DONE]`;
- headers: `x-request-id`, `openai-processing-ms`, `x-ratelimit-remaining-requests`.

`requests` holds `Recorded` entries (path, lower-cased headers, raw body bytes); `responses` the exact bytes of
each answer body sent back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

SNAPSHOT_SUFFIX = "-2024-07-18"
FINGERPRINT = "fp_rec0rd3d"
WORDS = ("Hello", " from", " the", " recording", " upstream", ".")
RESPONSE_HEADERS = [(b"x-request-id", b"req_upstream_123"), (b"openai-processing-ms", b"7"),
                    (b"x-ratelimit-remaining-requests", b"4999")]


@dataclasses.dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


def _usage(num_choices: int) -> dict[str, Any]:
    completion = len(WORDS) * num_choices
    return {"prompt_tokens": 11, "completion_tokens": completion, "total_tokens": 11 + completion,
            "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _logprobs(token: str, top: int) -> dict[str, Any]:
    alternatives = [{"token": token, "logprob": -0.015625, "bytes": list(token.encode())}]
    alternatives += [{"token": f"alt{i}", "logprob": -3.5 - i, "bytes": list(f"alt{i}".encode())} for i in range(max(0, top - 1))]
    return {"token": token, "logprob": -0.015625, "bytes": list(token.encode()), "top_logprobs": alternatives[:top]}


class RecordingUpstream:
    """The ASGI app (see the module docstring)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.responses: list[bytes] = []

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append(Recorded(scope["path"], headers, body))
        request = orjson.loads(body)
        kind = "chat" if scope["path"].endswith("/chat/completions") else "completion"
        if request.get("stream"):
            await self._stream(send, kind, request)
        else:
            answer = orjson.dumps(self._whole(kind, request))
            self.responses.append(answer)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), *RESPONSE_HEADERS]})
            await send({"type": "http.response.body", "body": answer})

    def _plan(self, request: dict[str, Any]) -> tuple[int, str, str, list[dict[str, Any]]]:
        """(number of choices, finish reason, content, tool calls) for `request`."""
        model = str(request.get("model", ""))
        tools = request.get("tools") or []
        fmt = (request.get("response_format") or {}).get("type")
        content = '{"answer": 42}' if fmt in ("json_object", "json_schema") else "".join(WORDS)
        calls = []
        if tools:
            names = [t["function"]["name"] for t in tools if t.get("type") == "function"]
            for i in range(1 if request.get("parallel_tool_calls") is False else 2):
                calls.append({"id": f"call_{i}", "type": "function",
                              "function": {"name": names[i % len(names)], "arguments": f'{{"city": "Paris{i}"}}'}})
        reason = "tool_calls" if calls else "content_filter" if "filtered" in model else "stop"
        return int(request.get("n") or 1), reason, content, calls

    def _head(self, request: dict[str, Any], obj: str) -> dict[str, Any]:
        return {"id": "chatcmpl-upstream-1", "object": obj, "created": 1733390000,
                "model": str(request.get("model")) + SNAPSHOT_SUFFIX, "system_fingerprint": FINGERPRINT,
                "service_tier": "default"}

    def _whole(self, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        num, reason, content, calls = self._plan(request)
        refuses = "refuses" in str(request.get("model"))
        top = int(request.get("top_logprobs") or 1)
        choices = []
        for i in range(num):
            if kind == "chat":
                message = {"role": "assistant", "content": None if calls else content,
                           "refusal": "I can't help with that." if refuses else None, "annotations": []}
                if calls:
                    message["tool_calls"] = calls
                logprobs = {"content": [_logprobs(w, top) for w in WORDS], "refusal": None} if request.get("logprobs") else None
                choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": reason})
            else:
                choices.append({"index": i, "text": content, "logprobs": None, "finish_reason": reason})
        return {**self._head(request, "chat.completion" if kind == "chat" else "text_completion"), "choices": choices,
                "usage": _usage(num)}

    async def _stream(self, send: Any, kind: str, request: dict[str, Any]) -> None:
        num, reason, content, calls = self._plan(request)
        wants_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        head = self._head(request, "chat.completion.chunk" if kind == "chat" else "text_completion")
        top = int(request.get("top_logprobs") or 1)
        sent: list[bytes] = []

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk = {**head, "choices": choices, **extra}
            if wants_usage and "usage" not in extra:
                chunk["usage"] = None
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), *RESPONSE_HEADERS]})
        for i in range(num):
            if kind == "chat":
                sent.append(event([{"index": i, "delta": {"role": "assistant", "content": None if calls else "", "refusal": None},
                                    "logprobs": None, "finish_reason": None}]))
                if calls:
                    for j, call in enumerate(calls):
                        start = {"index": j, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
                        sent.append(event([{"index": i, "delta": {"tool_calls": [start]}, "logprobs": None, "finish_reason": None}]))
                        args = call["function"]["arguments"]
                        for piece in (args[: len(args) // 2], args[len(args) // 2:]):
                            sent.append(event([{"index": i, "delta": {"tool_calls": [{"index": j, "function": {"arguments": piece}}]},
                                                "logprobs": None, "finish_reason": None}]))
                else:
                    pieces = WORDS if content == "".join(WORDS) else (content,)
                    for piece in pieces:
                        logprobs = {"content": [_logprobs(piece, top)], "refusal": None} if request.get("logprobs") else None
                        sent.append(event([{"index": i, "delta": {"content": piece}, "logprobs": logprobs, "finish_reason": None}]))
                sent.append(event([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}]))
            else:
                for piece in WORDS:
                    sent.append(event([{"index": i, "text": piece, "logprobs": None, "finish_reason": None}]))
                sent.append(event([{"index": i, "text": "", "logprobs": None, "finish_reason": reason}]))
        if wants_usage:
            sent.append(event([], usage=_usage(num)))
        sent.append(b"data: [DONE]\n\n")
        for data in sent:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self.responses.append(b"".join(sent))
