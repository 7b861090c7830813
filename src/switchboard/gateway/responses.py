"""OpenAI's exact response and stream-chunk shapes, serialized with orjson, and the two raw ASGI responses
that send them (or an upstream's own bytes, relayed)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from switchboard.engines.base import Completion, Finish, RequestKind, Usage

SSE_DONE = b"data: [DONE]\n\n"


def _choice(kind: RequestKind, index: int, completion: Completion) -> dict[str, Any]:
    reason = completion.finish.reason.value
    if kind == "completion":
        logprobs = completion.raw_choice.get("logprobs") if completion.raw_choice is not None else None
        return {"index": index, "text": completion.text, "logprobs": logprobs, "finish_reason": reason}
    if completion.raw_choice is not None:
        return {**completion.raw_choice, "index": index}
    return {"index": index, "message": {"role": "assistant", "content": completion.text, "refusal": None}, "logprobs": None,
            "finish_reason": reason}


def completion_body(kind: RequestKind, request_id: str, created: int, model: str, completion: Completion) -> bytes:
    """The whole answer; `completion.more_choices` are choices 1..n-1, `completion.finish.usage` covers all."""
    return orjson.dumps({
        "id": request_id,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "choices": [_choice(kind, i, c) for i, c in enumerate((completion, *completion.more_choices))],
        "usage": completion.finish.usage.as_dict(),
        "system_fingerprint": None,
    })


class ChunkWriter:
    """Writes one stream's SSE chunks; every chunk shares the id, created time and model."""

    __slots__ = ("kind", "head", "include_usage", "num_choices", "num_announced")

    def __init__(self, kind: RequestKind, request_id: str, created: int, model: str, include_usage: bool, num_choices: int = 1) -> None:
        self.kind = kind
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.head = {"id": request_id, "object": obj, "created": created, "model": model, "system_fingerprint": None}
        self.include_usage = include_usage
        self.num_choices = num_choices
        self.num_announced = 1  # choices whose role chunk is out (choice 0's by `role()`)

    def _chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        data = dict(self.head)
        data["choices"] = choices
        if self.include_usage:
            data["usage"] = usage.as_dict() if usage is not None else None
        return b"data: " + orjson.dumps(data) + b"\n\n"

    def role(self, index: int = 0) -> bytes:
        """A chat choice's first chunk, announcing the assistant role (as OpenAI sends it)."""
        return self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])

    def text(self, text: str, raw_delta: dict[str, Any] | None = None, index: int = 0, logprobs: dict[str, Any] | None = None) -> bytes:
        if self.kind == "chat":
            delta = raw_delta if raw_delta is not None else {"content": text}
            chunk = self._chunk([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}])
            if index >= self.num_announced:  # a later choice's first piece (n > 1)
                self.num_announced = index + 1
                return self.role(index) + chunk
            return chunk
        return self._chunk([{"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}])

    def is_last(self, finish: Finish) -> bool:
        return finish.index + 1 >= self.num_choices

    def finish(self, finish: Finish) -> bytes:
        """A choice's finish chunk; after the last choice's, the usage chunk (if asked for) and [DONE]."""
        if self.kind == "chat":
            last = self._chunk([{"index": finish.index, "delta": {}, "logprobs": None, "finish_reason": finish.reason.value}])
        else:
            last = self._chunk([{"index": finish.index, "text": "", "logprobs": None, "finish_reason": finish.reason.value}])
        if not self.is_last(finish):
            return last
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


WATCH_AFTER_S = 0.25
"""A whole answer's wait is watched for the client leaving only once it has lasted this long: a watcher task on
every request cost the gateway ~50 µs of CPU a request (0.82x the whole answers a second at concurrency 64,
`benchmarks/gateway_overhead.py --relay-cell --whole`); a timer costs a few, and an answer this quick is not worth
cancelling."""


class ClientWatch:
    """Cancels the task that made it if the client disconnects before `stop()` (made after the request's body was
    read: the channel has nothing else to say), watching from `WATCH_AFTER_S` on. `client_left`: whether it did —
    the task then takes its CancelledError back (`uncancel`) and answers no one. For a whole answer, whose engine
    would otherwise generate the rest for nobody; a stream has `SSEResponse`'s own watcher."""

    __slots__ = ("client_left", "_task", "_timer", "_watcher")

    def __init__(self, receive: Any) -> None:
        self.client_left = False
        self._task = asyncio.current_task()
        self._watcher: asyncio.Future[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start, receive)

    def _start(self, receive: Any) -> None:
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Any) -> None:
        await _wait_for_disconnect(receive)
        self.client_left = True
        assert self._task is not None
        self._task.cancel()

    def stop(self) -> None:
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


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
