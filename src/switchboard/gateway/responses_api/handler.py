"""`/v1/responses`: `POST` translates, serves as a chat completion (the same routing, admission, failover, limits,
metrics and request log) and translates the answer back, storing it when asked (`store`, on by default as at
OpenAI) so that `previous_response_id` can continue it; `GET /v1/responses/{id}` (and `/input_items`) and
`DELETE` read and remove stored ones — each API key only its own.

Written by hand: the libraries that bridge the two APIs (LiteLLM's, vLLM's) come with their own servers and
clients; the mapping itself is small and fixed (request.py, result.py, events.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.gateway.errors import ApiError, error_response, model_not_found
from switchboard.gateway.handlers import Handlers, read_body
from switchboard.gateway.kept import caller_key_id, list_page, page_params, storage_unavailable
from switchboard.gateway.requests import parse_json_object
from switchboard.gateway.responses import JSONBytesResponse, SSEResponse
from switchboard.gateway.responses_api import request as rq
from switchboard.gateway.responses_api import result as r
from switchboard.gateway.responses_api.events import ResponsesStream
from switchboard.gateway.responses_api.ids import new_id, response_id_for
from switchboard.storage.responses import StoreUnavailable
from switchboard.types import AUTO_MODEL

log = logging.getLogger("switchboard.gateway")

# What the chat answer's error says about the chat body, in the Responses request's terms.
_PARAMS = {"messages": "input", "max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens",
           "response_format": "text.format", "reasoning_effort": "reasoning.effort"}
# Ids for stored input items that came without one, by item type (OpenAI lists every input item with an id).
_ITEM_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, f"no stored response has the id '{response_id}'", param="response_id", code="response_not_found")


def _storage_unavailable(exc: Exception) -> ApiError:
    return storage_unavailable(exc, "response store")


class ResponsesHandler:
    def __init__(self, handlers: Handlers, store: Any, conversations: Any = None) -> None:
        self.handlers = handlers
        self.store = store  # storage/responses.py: ResponseStore, or DisabledResponseStore
        self.conversations = conversations  # gateway/conversations.py: a `conversation`'s history, and where the answer goes

    async def _history(self, parsed: rq.ResponsesRequest) -> list[dict[str, Any]] | None:
        """The items the response continues: its conversation's, or its previous response's (None: neither)."""
        if (conversation := rq.conversation_id(parsed)) is not None:
            if self.conversations is None:
                raise ApiError(400, "this gateway keeps no conversations", param="conversation", code="unsupported_parameter")
            return await self.conversations.history(conversation)
        return await self._earlier(parsed.previous_response_id) if parsed.previous_response_id is not None else None

    async def post(self, request: Request) -> Response:
        started_at = time.perf_counter()
        release = _nothing
        try:
            try:
                if self.handlers.is_draining:
                    return await self.handlers.chat_completions(request)  # its 503, counted where every refusal is
                raw = await read_body(request, self.handlers.max_body_bytes)
                parsed = rq.parse(raw)
                if (conversation := rq.conversation_id(parsed)) is not None and self.conversations is not None:
                    release = await self.conversations.turns.acquire(conversation)  # held until its items are appended
                translated = rq.translate(parsed, await self._history(parsed))
            except ApiError as exc:
                self.handlers.metrics.invalid(started_at, exc.status)
                return error_response(exc)
            chat = await self.handlers.chat_completions(_with_body(request, orjson.dumps(translated.chat)))
            if isinstance(chat, SSEResponse):
                stream, release = self._stream(translated, chat, release), _nothing  # the stream releases it when it closes
                return stream
            if isinstance(chat, JSONBytesResponse):
                return await self._whole(translated, chat)
            return _in_responses_terms(chat, translated.request)
        finally:
            release()

    async def input_tokens(self, request: Request) -> Response:
        """`POST /v1/responses/input_tokens` (`client.responses.input_tokens.count`): the input tokens the named
        expert would be sent for this request — llama.cpp's exact count with the GGUF's template and vocabulary
        for a llama.cpp expert, else the gateway's estimate (4 characters a token); the `x-switchboard-token-count`
        header says which (`exact` or `estimate`)."""
        try:
            body = parse_json_object(await read_body(request, self.handlers.max_body_bytes))
            body.setdefault("input", [])  # optional here: the count of a previous response's conversation alone
            parsed = rq.parse_body(body)
            chat = rq.translate(parsed, await self._history(parsed)).chat
            if parsed.model == AUTO_MODEL:
                raise ApiError(400, "name the expert to count for: 'auto' chooses per request, and experts count tokens differently",
                               param="model", code="unsupported_value")
            expert = self.handlers.state.fleet.expert(parsed.model)
            if expert is None:
                raise model_not_found(parsed.model)
            exact = await self.handlers.prompt_tokens.exact("chat", chat, expert)
            count = exact if exact is not None else rq.estimate_chat_tokens(chat)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps({"object": "response.input_tokens", "input_tokens": count}),
                                 {"x-switchboard-token-count": "exact" if exact is not None else "estimate"})

    async def _earlier(self, response_id: str) -> list[dict[str, Any]]:
        """The conversation so far of the response `previous_response_id` names: its input items, then its output."""
        if not self.store.enabled:
            raise ApiError(400, f"previous_response_id needs stored responses, and this gateway stores none ({self.store.why}); send the "
                                "whole conversation in 'input'", param="previous_response_id", code="unsupported_parameter")
        try:
            stored = await self.store.load(response_id, caller_key_id())
        except Exception as exc:  # noqa: BLE001 — the database is down: say so
            raise _storage_unavailable(exc) from None
        if stored is None:
            raise ApiError(404, f"previous response with id '{response_id}' not found", param="previous_response_id", code="previous_response_not_found")
        return [*stored.input_items, *stored.body.get("output", [])]

    async def _whole(self, translated: rq.Translated, chat: JSONBytesResponse) -> Response:
        headers = dict(chat.headers)
        response_id = response_id_for(headers["x-request-id"])
        body = r.from_chat(translated.request, response_id, headers["x-switchboard-expert"], orjson.loads(chat.body))
        await self._keep(translated, body)
        return JSONBytesResponse(orjson.dumps(body), headers, chat.raw_headers)  # an upstream's own headers too (x-ratelimit-*...)

    def _stream(self, translated: rq.Translated, chat: SSEResponse, release: Callable[[], None]) -> Response:
        headers = dict(chat.headers)
        stream = ResponsesStream(translated.request, response_id_for(headers["x-request-id"]), int(time.time()), headers["x-switchboard-expert"],
                                 store=self._stores(translated), on_done=lambda body: self._keep(translated, body))
        return SSEResponse(_Closing(stream.events(chat.chunks), chat.chunks, release), headers, chat.raw_headers)

    def _stores(self, translated: rq.Translated) -> bool:
        return bool(self.store.enabled and translated.request.store is not False)

    async def _keep(self, translated: rq.Translated, body: dict[str, Any]) -> None:
        """Stores a finished Response when asked, and adds its input and output to its conversation, before the
        client has it (a follow-up may come at once); `body["store"]` says whether it was stored."""
        conversation = rq.conversation_id(translated.request)
        turn_items = [*translated.new_items, *body.get("output", [])] if conversation is not None else []
        body["store"] = self._stores(translated)
        if body["store"]:
            items = [as_stored_item(item) for item in translated.input_items]
            turn = (conversation, [as_stored_item(item) for item in turn_items]) if conversation is not None else None
            try:
                await self.store.save(body["id"], caller_key_id(), body, items, turn)  # one commit for the Response and its turn
                return
            except StoreUnavailable:  # the database failed a moment ago (that was logged): not tried
                body["store"] = False
            except Exception as exc:  # noqa: BLE001 — the answer stands; it just cannot be continued or retrieved
                log.warning("stored responses: %s not stored (%s: %s)", body["id"], type(exc).__name__, exc)
                body["store"] = False
        if conversation is not None:  # not stored (`store: false`, or the save failed): the turn on its own
            try:
                if not await self.conversations.extend(conversation, turn_items):
                    log.warning("conversations: %s was deleted before response %s could be added to it", conversation, body["id"])
            except ApiError as exc:  # the database failed: the answer stands, the conversation misses this turn (logged)
                log.warning("conversations: response %s not added to %s (%s)", body["id"], conversation, exc.message)

    async def _stored(self, request: Request) -> Any:
        response_id = request.path_params["response_id"]
        if not self.store.enabled:
            raise _not_found(response_id)
        try:
            stored = await self.store.load(response_id, caller_key_id())
        except Exception as exc:  # noqa: BLE001
            raise _storage_unavailable(exc) from None
        if stored is None:
            raise _not_found(response_id)
        return stored

    async def get(self, request: Request) -> Response:
        """`GET /v1/responses/{id}`: the stored Response, as it was answered (not replayed as a stream)."""
        try:
            if request.query_params.get("stream", "false").lower() not in ("false", "0"):
                raise ApiError(400, "retrieving a response as a stream is not supported here (its events are not kept): retrieve it "
                                    "without stream", param="stream", code="unsupported_parameter")
            stored = await self._stored(request)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(stored.body), {})

    async def input_items(self, request: Request) -> Response:
        """`GET /v1/responses/{id}/input_items`: the conversation's input items, a cursor page (`limit`, `order`,
        `after`, as OpenAI pages them; newest first by default)."""
        try:
            stored = await self._stored(request)
            params = page_params(request.query_params, "desc")
            body = list_page(stored.input_items, params, "input item of this response")
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(body), {})

    async def delete(self, request: Request) -> Response:
        """`DELETE /v1/responses/{id}`: removes a stored Response (404 if there is none of this key's)."""
        response_id = request.path_params["response_id"]
        try:
            if not self.store.enabled:
                raise _not_found(response_id)
            try:
                removed = await self.store.remove(response_id, caller_key_id())
            except Exception as exc:  # noqa: BLE001
                raise _storage_unavailable(exc) from None
            if not removed:
                raise _not_found(response_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps({"id": response_id, "object": "response.deleted", "deleted": True}), {})


def as_stored_item(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as OpenAI lists it: with an id and a type, a message's text content as parts."""
    kind = item.get("type", "message")
    stored = {"id": item.get("id") or new_id(_ITEM_ID_PREFIX.get(kind, "item")), "type": kind, **{k: v for k, v in item.items() if k not in ("id", "type")}}
    if kind == "message" and isinstance(stored.get("content"), str):
        part = "output_text" if stored.get("role") == "assistant" else "input_text"
        stored["content"] = [{"type": part, "text": stored["content"], **({"annotations": []} if part == "output_text" else {})}]
    return stored


async def cancel(request: Request) -> Response:
    """`POST /v1/responses/{id}/cancel`: only background responses can be cancelled (OpenAI's rule), and none run here."""
    return error_response(ApiError(400, "only background responses can be cancelled, and this gateway runs none (background: true is "
                                        "refused); a streamed response is cancelled by closing its stream", param="response_id",
                                   code="unsupported_operation"))


def _nothing() -> None:
    pass


class _Closing:
    """`events`, closing the chat stream under it when the client leaves (so its engine stops generating), and then
    calling `release` (the conversation's turn). A class, not a generator: SSEResponse closes it however the stream
    ends — even one never started (a generator's `finally` would not run then)."""

    __slots__ = ("events", "chat_chunks", "release")

    def __init__(self, events: Any, chat_chunks: Any, release: Callable[[], None]) -> None:
        self.events = events
        self.chat_chunks = chat_chunks
        self.release = release

    def __aiter__(self) -> "_Closing":
        return self

    async def __anext__(self) -> Any:
        return await self.events.__anext__()

    async def aclose(self) -> None:
        try:
            await self.events.aclose()
            await self.chat_chunks.aclose()
        finally:
            self.release()


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
