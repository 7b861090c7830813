"""A chat completion stream (SSE bytes: the gateway's own chunks or an upstream's, relayed) → the Responses
stream's typed events.

The sequence OpenAI sends, each event numbered by `sequence_number`: `response.created`, `response.in_progress`;
per output item, `response.output_item.added`, then for a message `response.content_part.added`,
`response.output_text.delta`…, `response.output_text.done`, `response.content_part.done` (for a function call
`response.function_call_arguments.delta`…, `.done`), and `response.output_item.done` when the next item begins
or the answer ends; last `response.completed` (or `response.incomplete`, with why) carrying the whole Response.
A chat stream that fails mid-way (its `{"error": ...}` chunk) ends with `response.failed` and an `error` event,
which the official clients raise as an APIError, as they do for chat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson

from switchboard.gateway.responses_api import result as r
from switchboard.gateway.responses_api.ids import new_id
from switchboard.gateway.responses_api.request import ResponsesRequest, wants_text_logprobs


def sse_events(chunks: bytes, pending: bytearray) -> Iterator[bytes]:
    """The `data:` payloads of the complete SSE events in `pending` + `chunks`; leaves a partial event in `pending`."""
    pending += chunks
    if b"\r" in pending:  # CRLF line ends (a CR may end one read and its LF begin the next: normalised on the whole)
        pending[:] = pending.replace(b"\r\n", b"\n")
    while (end := pending.find(b"\n\n")) >= 0:
        block = bytes(pending[:end])
        del pending[: end + 2]
        data = b"\n".join(line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:"))
        if data:
            yield data


class ResponsesStream:
    """Turns one chat stream into one Responses stream. `events` is the whole conversion."""

    def __init__(self, request: ResponsesRequest, response_id: str, created_at: int, model: str, *, store: bool = False,
                 on_done: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> None:
        """`store`: whether the response is to be stored (its lifecycle events say so); `on_done(response)` is
        awaited with the finished Response before the last event goes out (it stores it, and may set its `store`)."""
        self.request = request
        self.store = store
        self.on_done = on_done
        self.response_id = response_id
        self.created_at = created_at
        self.model = model
        self.wants_logprobs = wants_text_logprobs(request)
        self.sequence_number = 0
        self.output: list[dict[str, Any]] = []  # items, as they stand
        self.open_index: int | None = None  # the output index of the item still streaming
        self.calls: dict[int, int] = {}  # a chat tool call's index → its output index
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    async def events(self, chat_chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        yield self._lifecycle("response.created", "in_progress") + self._lifecycle("response.in_progress", "in_progress")
        pending = bytearray()
        async for chunk in chat_chunks:
            out: list[bytes] = []  # the events of one read, sent together (one ASGI send, not one per event)
            for data in sse_events(chunk, pending):
                if data == b"[DONE]":
                    continue
                try:
                    parsed = orjson.loads(data)
                except orjson.JSONDecodeError:
                    parsed = None
                if not isinstance(parsed, dict):  # an upstream's malformed event: the stream fails, saying so
                    parsed = {"error": {"message": f"the expert's stream held an event that is not a JSON object: {data[:80]!r}",
                                        "code": "bad_upstream_response"}}
                out.extend(self._failed(parsed["error"]) if "error" in parsed else self._chunk(parsed))
            if out:
                yield b"".join(out)
        if self.finish_reason is None:  # the chat stream always ends with a finish or an error chunk; be safe anyway
            return
        out = list(self._open_message()) if not self.output else []  # an empty answer is still one (empty) message, as when whole
        out.extend(self._close_open())
        status, incomplete = r.status_of(self.finish_reason)
        if status == "incomplete":
            for item in self.output:
                item["status"] = "incomplete"
        final = self._response(status, incomplete)
        if self.on_done is not None:
            await self.on_done(final)
        yield b"".join([*out, self._event("response.completed" if status == "completed" else "response.incomplete", response=final)])

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _lifecycle(self, kind: str, status: str, error: dict[str, Any] | None = None) -> bytes:
        return self._event(kind, response=self._response(status, None, error))

    def _response(self, status: str, incomplete: dict[str, Any] | None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return r.response_object(self.request, self.response_id, self.created_at, self.model, status, self.output,
                                 self.usage if status != "in_progress" else None, incomplete, error, self.store)

    def _chunk(self, chunk: dict[str, Any]) -> Iterator[bytes]:
        if chunk.get("usage"):
            self.usage = r.usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if text:
                yield from self._text(text, choice.get("logprobs"))
            for call in delta.get("tool_calls") or ():
                yield from self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _open_message(self) -> Iterator[bytes]:
        item = r.message_item(new_id("msg"), "", "in_progress", [] if self.wants_logprobs else None)
        yield from self._add(item)
        part = {"type": "output_text", "text": "", "annotations": []}
        yield self._event("response.content_part.added", item_id=item["id"], output_index=self.open_index, content_index=0, part=part)

    def _text(self, text: str, chat_logprobs: dict[str, Any] | None) -> Iterator[bytes]:
        if self.open_index is None or self.output[self.open_index]["type"] != "message":
            yield from self._close_open()
            yield from self._open_message()
        assert self.open_index is not None
        item = self.output[self.open_index]
        part = item["content"][0]
        part["text"] += text
        logprobs = r.text_logprobs(chat_logprobs) if self.wants_logprobs else []
        if self.wants_logprobs:
            part["logprobs"].extend(logprobs)
        yield self._event("response.output_text.delta", item_id=item["id"], output_index=self.open_index, content_index=0, delta=text,
                          logprobs=logprobs)

    def _call(self, call: dict[str, Any]) -> Iterator[bytes]:
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self.calls:
            yield from self._close_open()
            item = r.function_call_item(new_id("fc"), call.get("id") or new_id("call"), function.get("name") or "", "", "in_progress")
            yield from self._add(item)
            self.calls[index] = self.open_index  # type: ignore[assignment]
        output_index = self.calls[index]
        item = self.output[output_index]
        if function.get("name") and not item["name"]:
            item["name"] = function["name"]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            yield self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=output_index, delta=function["arguments"])

    def _add(self, item: dict[str, Any]) -> Iterator[bytes]:
        self.output.append(item)
        self.open_index = len(self.output) - 1
        yield self._event("response.output_item.added", output_index=self.open_index, item=_copy(item))

    def _close_open(self) -> Iterator[bytes]:
        if self.open_index is None:
            return
        index, item = self.open_index, self.output[self.open_index]
        self.open_index = None
        item["status"] = "completed" if self.finish_reason != "length" else "incomplete"
        if item["type"] == "message":
            part = item["content"][0]
            yield self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=part["text"],
                              logprobs=part.get("logprobs") or [])
            yield self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=_copy(part))
        else:
            yield self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index, name=item["name"],
                              arguments=item["arguments"])
        yield self._event("response.output_item.done", output_index=index, item=_copy(item))

    def _failed(self, error: Any) -> Iterator[bytes]:
        message = error.get("message") if isinstance(error, dict) else str(error)
        code = (error.get("code") if isinstance(error, dict) else None) or "server_error"
        self.finish_reason = None  # nothing completes after this
        self.store = False  # and nothing is stored
        yield self._lifecycle("response.failed", "failed", error={"code": code, "message": message})
        # OpenAI's `error` event; its `error` object is what the official clients raise an APIError from.
        yield self._event("error", code=code, message=message, param=None, error=error)


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(item))
