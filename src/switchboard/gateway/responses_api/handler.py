"""`POST /v1/responses`: translate, serve as a chat completion (the same routing, admission, failover, limits, metrics
and request log), translate the answer back.

Written by hand: the libraries that bridge the two APIs (LiteLLM's, vLLM's) come with their own servers and
clients; the mapping itself is small and fixed (request.py, result.py, events.py).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.handlers import Handlers, read_body
from switchboard.gateway.responses import JSONBytesResponse, SSEResponse
from switchboard.gateway.responses_api import request as rq
from switchboard.gateway.responses_api import result as r
from switchboard.gateway.responses_api.ids import response_id_for
from switchboard.gateway.responses_api.events import ResponsesStream, sse_events

# What the chat answer's error says about the chat body, in the Responses request's terms.
_PARAMS = {"messages": "input", "max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens",
           "response_format": "text.format", "reasoning_effort": "reasoning.effort"}


class ResponsesHandler:
    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers

    async def post(self, request: Request) -> Response:
        started_at = time.perf_counter()
        try:
            if self.handlers.is_draining:
                return await self.handlers.chat_completions(request)  # its 503, counted where every refusal is
            raw = await read_body(request, self.handlers.max_body_bytes)
            translated = rq.parse(raw)
        except ApiError as exc:
            self.handlers.metrics.invalid(started_at, exc.status)
            return error_response(exc)
        chat = await self.handlers.chat_completions(_with_body(request, orjson.dumps(translated.chat)))
        if isinstance(chat, SSEResponse):
            return self._stream(translated, chat)
        if isinstance(chat, JSONBytesResponse):
            return self._whole(translated, chat)
        return _in_responses_terms(chat, translated.request)

    def _whole(self, translated: rq.Translated, chat: JSONBytesResponse) -> Response:
        headers = dict(chat.headers)
        response_id = response_id_for(headers["x-request-id"])
        body = r.from_chat(translated.request, response_id, headers["x-switchboard-expert"], orjson.loads(chat.body))
        return JSONBytesResponse(orjson.dumps(body), headers)

    def _stream(self, translated: rq.Translated, chat: SSEResponse) -> Response:
        headers = dict(chat.headers)
        stream = ResponsesStream(translated.request, response_id_for(headers["x-request-id"]), int(time.time()), headers["x-switchboard-expert"])
        return SSEResponse(_closing(stream.events(chat.chunks), chat.chunks), headers)


async def _closing(events: Any, chat_chunks: Any) -> Any:
    """`events`, closing the chat stream under it when the client leaves (so its engine stops generating)."""
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()
        await chat_chunks.aclose()


def _with_body(request: Request, body: bytes) -> Request:
    """The request, its body replaced (the chat handler reads it from the ASGI channel)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()  # after the body: the client's own channel (disconnects)

    scope = dict(request.scope)
    scope["headers"] = [(k, v) for k, v in request.scope["headers"] if k != b"content-length"] + [(b"content-length", str(len(body)).encode())]
    return Request(scope, receive)


def _in_responses_terms(error: Response, request: rq.ResponsesRequest) -> Response:
    """A chat error answer with its `param` named as the Responses request names it."""
    try:
        body = orjson.loads(bytes(error.body))
        param = body["error"].get("param")
    except (ValueError, KeyError, TypeError, AttributeError):
        return error
    logprobs = "top_logprobs" if request.top_logprobs else "include"
    if param in _PARAMS or param in ("logprobs", "top_logprobs") or (isinstance(param, str) and param.startswith("messages")):
        body["error"]["param"] = logprobs if param in ("logprobs", "top_logprobs") else _PARAMS.get(param, "input")
        headers = {k: v for k, v in error.headers.items() if k.lower() not in ("content-length", "content-type")}
        return Response(orjson.dumps(body), status_code=error.status_code, media_type="application/json", headers=headers)
    return error
