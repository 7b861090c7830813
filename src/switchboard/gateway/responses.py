"""OpenAI's exact response and stream-chunk shapes, serialized with orjson, and the two raw ASGI responses
that send them (or an upstream's own bytes, relayed)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from switchboard.engines.base import Completion, Finish, RequestKind, Usage

SSE_DONE = b"data: [DONE]\n\n"


def completion_body(kind: RequestKind, request_id: str, created: int, model: str, completion: Completion) -> bytes:
    finish = completion.finish
    if kind == "chat":
        if completion.raw_choice is not None:
            choice = dict(completion.raw_choice)
            choice["index"] = 0
        else:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish.reason.value,
            }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": completion.text, "logprobs": None, "finish_reason": finish.reason.value}
        obj = "text_completion"
    return orjson.dumps({
        "id": request_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": finish.usage.as_dict(),
        "system_fingerprint": None,
    })


class ChunkWriter:
    """Writes one stream's SSE chunks; every chunk shares the id, created time and model."""

    __slots__ = ("kind", "head", "include_usage")

    def __init__(self, kind: RequestKind, request_id: str, created: int, model: str, include_usage: bool) -> None:
        self.kind = kind
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.head = {"id": request_id, "object": obj, "created": created, "model": model, "system_fingerprint": None}
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        data = dict(self.head)
        data["choices"] = choices
        if self.include_usage:
            data["usage"] = usage.as_dict() if usage is not None else None
        return b"data: " + orjson.dumps(data) + b"\n\n"

    def role(self) -> bytes:
        """The chat stream's first chunk, announcing the assistant role (as OpenAI sends it)."""
        return self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])

    def text(self, text: str, raw_delta: dict[str, Any] | None = None) -> bytes:
        if self.kind == "chat":
            delta = raw_delta if raw_delta is not None else {"content": text}
            return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
        return self._chunk([{"index": 0, "text": text, "logprobs": None, "finish_reason": None}])

    def finish(self, finish: Finish) -> bytes:
        if self.kind == "chat":
            last = self._chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish.reason.value}])
        else:
            last = self._chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": finish.reason.value}])
        if self.include_usage:
            last += self._chunk([], finish.usage)
        return last + SSE_DONE

    @staticmethod
    def error(status: int, message: str, code: str) -> bytes:
        """An explicit error event: a stream that fails mid-way says so instead of going silent."""
        from switchboard.gateway.errors import error_body

        return b"data: " + orjson.dumps(error_body(status, message, None, code)) + b"\n\n"


class SSEResponse:
    """A server-sent-event stream for ASGI, leaner than Starlette's StreamingResponse: one watcher on the
    client's channel instead of a task group per stream (measured in benchmarks/gateway_overhead.py).

    Chunks are sent as the iterator yields them. When the client goes away the iterator is closed at the next
    chunk boundary, so an engine stops generating for nobody.
    """

    __slots__ = ("chunks", "headers", "raw_headers")

    def __init__(self, chunks: Any, headers: dict[str, str], raw_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.chunks = chunks
        self.headers = headers
        self.raw_headers = raw_headers  # an upstream's own (engines/openai_upstream.py `_client_headers`)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = [(b"content-type", b"text/event-stream; charset=utf-8"), *self.raw_headers]
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        is_ended = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            async for chunk in self.chunks:
                if watcher.done():
                    break
                if is_ended:
                    continue
                # The chunk that closes the stream ends the response in the same message (one send fewer); the
                # iterator still runs to its end for its bookkeeping.
                is_ended = chunk.endswith(SSE_DONE)
                await send({"type": "http.response.body", "body": chunk, "more_body": not is_ended})
            else:
                if not is_ended:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            await self.chunks.aclose()


async def _wait_for_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class JSONBytesResponse:
    """An already-serialized JSON answer sent as two raw ASGI messages: the success path skips Starlette's
    header normalisation, which profiled at ~6% of a proxied request's CPU."""

    __slots__ = ("body", "headers", "raw_headers")

    def __init__(self, body: bytes, headers: dict[str, str], raw_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.body = body
        self.headers = headers
        self.raw_headers = raw_headers  # an upstream's own (engines/openai_upstream.py `_client_headers`)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode()), *self.raw_headers]
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})
