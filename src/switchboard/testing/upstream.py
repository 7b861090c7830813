"""A tiny, fast OpenAI-compatible upstream: a raw ASGI app (no framework, so it is never the bottleneck when
the gateway is measured against it).

Its behaviour is chosen by the request's `model`, so one server can play every kind of upstream:

- anything else — a healthy model: answers `"mock answer"` (or streams `num_chunks` chunks with usage);
- `fail-500` — HTTP 500 with an error body;           `fail-429` — HTTP 429 with `Retry-After: 2`;
- `garbage` — HTTP 200 whose body is not JSON;         `stall` — accepts, then never answers;
- `cut-mid-stream` — streams two chunks and closes the connection without `[DONE]`;
- `reject-400` — HTTP 400 as for a prompt over the context window;
- `stall-after-headers` — sends a 200 status line and headers, then nothing;
- `stall-mid-stream` — streams two chunks, then nothing;
- `slowloris` — sends a 200 and then one byte every `trickle_interval_s`, never completing an answer.

`faults` maps a model name to one of these behaviours, overriding it while set: tests and the soak benchmark
inject faults into a running upstream by setting and clearing entries.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _send_json(send: Any, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def _completion(kind: str, model: str, text: str) -> dict[str, Any]:
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        obj = "text_completion"
    return {"id": "mock-1", "object": obj, "created": 0, "model": model, "choices": [choice],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}


def _chunk(kind: str, model: str, text: str | None, finish: str | None, *, role: bool = False) -> bytes:
    if kind == "chat":
        delta = {"role": "assistant", "content": ""} if role else {"content": text} if text is not None else {}
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish}
        obj = "text_completion"
    return b"data: " + orjson.dumps({"id": "mock-1", "object": obj, "created": 0, "model": model, "choices": [choice]}) + b"\n\n"


class MockUpstream:
    """The ASGI app. `num_chunks` is the length of streamed answers; `requests_seen` counts requests."""

    def __init__(self, num_chunks: int = 8, *, chunk_interval_s: float = 0.0, trickle_interval_s: float = 0.2) -> None:
        self.num_chunks = num_chunks
        self.chunk_interval_s = chunk_interval_s
        self.trickle_interval_s = trickle_interval_s
        self.requests_seen = 0
        self.last_body: dict[str, Any] | None = None
        self.faults: dict[str, str] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path.endswith("/models"):
            await _send_json(send, 200, {"object": "list", "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}]})
            return
        kind = "chat" if path.endswith("/chat/completions") else "completion"
        body = orjson.loads(await _read_body(receive))
        self.requests_seen += 1
        self.last_body = body
        model = body.get("model", "mock")
        behaviour = self.faults.get(model, model)
        if behaviour == "fail-500":
            await _send_json(send, 500, {"error": {"message": "mock internal failure", "type": "server_error"}})
        elif behaviour == "fail-429":
            await _send_json(send, 429, {"error": {"message": "slow down", "type": "rate_limit_error"}}, [(b"retry-after", b"2")])
        elif behaviour == "reject-400":
            await _send_json(send, 400, {"error": {"message": "prompt is over the context window", "type": "invalid_request_error"}})
        elif behaviour == "garbage":
            await _send_json(send, 200, b"<html>definitely not json</html>")
        elif behaviour == "stall":
            await asyncio.sleep(3600)
        elif behaviour == "stall-after-headers":
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS if body.get("stream") else _JSON_HEADERS})
            await asyncio.sleep(3600)
        elif behaviour == "slowloris":
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS if body.get("stream") else _JSON_HEADERS})
            while True:  # one byte at a time, never a whole line: no read timeout ever fires
                await send({"type": "http.response.body", "body": b"d", "more_body": True})
                await asyncio.sleep(self.trickle_interval_s)
        elif body.get("stream"):
            await self._stream(send, kind, model, cut=behaviour == "cut-mid-stream", stall=behaviour == "stall-mid-stream",
                               usage=bool((body.get("stream_options") or {}).get("include_usage")))
        else:
            await _send_json(send, 200, _completion(kind, model, "mock answer"))

    async def _stream(self, send: Any, kind: str, model: str, *, cut: bool, stall: bool, usage: bool) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        if kind == "chat":  # OpenAI's first chunk announces the role
            await send({"type": "http.response.body", "body": _chunk(kind, model, None, None, role=True), "more_body": True})
        for i in range(2 if cut or stall else self.num_chunks):
            if i and self.chunk_interval_s:
                await asyncio.sleep(self.chunk_interval_s)
            await send({"type": "http.response.body", "body": _chunk(kind, model, f"tok{i} ", None), "more_body": True})
        if stall:
            await asyncio.sleep(3600)
        if cut:
            raise ConnectionResetError("mock upstream cut the stream")  # uvicorn closes the connection
        tail = _chunk(kind, model, None, "stop")
        if usage:
            tail += b"data: " + orjson.dumps({"id": "mock-1", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
                                              "usage": {"prompt_tokens": 7, "completion_tokens": self.num_chunks, "total_tokens": 7 + self.num_chunks}}) + b"\n\n"
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})
