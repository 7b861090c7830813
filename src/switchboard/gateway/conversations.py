"""OpenAI's Conversations API (`/v1/conversations`, `client.conversations`): durable lists of Responses items.
A response given `conversation` reads its items as the history and appends its input and output to it
(gateway/responses_api/handler.py); clients also read and write the items themselves (OpenAI's Agents SDK keeps a
session's memory this way, `OpenAIConversationsSession`). Stored in the request log's database
(storage/conversations.py); each API key sees only its own.

Items are checked as a Responses input would be when added (what cannot be a response's input cannot be a
conversation's history), and stored as OpenAI lists them: with an id and a type, a message's text as parts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.handlers import read_body
from switchboard.gateway.kept import caller_key_id, page_object, page_params, storage_unavailable
from switchboard.gateway.requests import parse_json_object, validate
from switchboard.gateway.responses import JSONBytesResponse
from switchboard.gateway.responses_api import request as rq
from switchboard.gateway.responses_api.handler import as_stored_item
from switchboard.gateway.responses_api.ids import new_id
from switchboard.gateway.schemas import ConversationCreate, ConversationItemsCreate, ConversationUpdate
from switchboard.storage import conversations as cs

def _not_found(conversation_id: str, why: str = "") -> ApiError:
    return ApiError(404, f"no conversation has the id '{conversation_id}'" + (f" (this gateway stores none: {why})" if why else ""),
                    param="conversation_id", code="not_found")


def checked_items(items: list[Any], where: str) -> list[dict[str, Any]]:
    """`items` as stored, if each could be a response's input (a 400 naming `where[i]` otherwise)."""
    if not items:
        return []
    try:
        rq.translate(rq.parse_body({"model": "conversation", "input": items}))
    except ApiError as exc:
        param = exc.param.replace("input", where, 1) if exc.param else where
        raise ApiError(exc.status, exc.message.replace("input", where, 1), param=param, code=exc.code) from None
    return [as_stored_item(item) for item in items]


class TurnLocks:
    """One turn at a time per conversation: a response given a conversation holds its lock from reading the history
    to appending its items, so a second response sent meanwhile reads a history with the first's turn in it rather
    than the same one (two answers to the same past). Waits at most `wait_s`, then the second is a 409 naming the
    conversation. Per gateway process: two gateways sharing a database do not see each other's turns."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def acquire(self, conversation_id: str) -> Callable[[], None]:
        """Waits for the conversation's turn; returns its release (safe to call more than once)."""
        lock, num_users = self._locks.get(conversation_id) or (asyncio.Lock(), 0)
        self._locks[conversation_id] = (lock, num_users + 1)
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            if lock.locked() and acquired:
                lock.release()
            held, users = self._locks[conversation_id]
            if users <= 1:
                del self._locks[conversation_id]
            else:
                self._locks[conversation_id] = (held, users - 1)

        acquired = False
        try:
            await asyncio.wait_for(lock.acquire(), self.wait_s)
            acquired = True
        except TimeoutError:
            release()
            raise ApiError(409, f"another response is being made in conversation '{conversation_id}' (waited {self.wait_s:.0f} s); "
                                "retry once it ends", param="conversation", code="conversation_locked") from None
        except BaseException:
            release()
            raise
        return release


class Conversations:
    """The `/v1/conversations` endpoints over `store` (storage/conversations.py: ConversationStore, or
    DisabledConversationStore), and what responses given a conversation need: `turns`, `history` and `extend`."""

    def __init__(self, store: Any, max_body_bytes: int, clock: Any = time.time, turn_wait_s: float = 300.0) -> None:
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.turns = TurnLocks(turn_wait_s)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.store.enabled:
            raise ApiError(400, f"this gateway stores no conversations ({self.store.why})", param="conversation", code="unsupported_operation")
        try:
            return await self.store.call(fn, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 — the database is down: say so
            raise storage_unavailable(exc, "conversation store") from None

    async def history(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every item of this key's conversation, oldest first (a 404 if there is none)."""
        items = await self._call(cs.all_items, conversation_id, caller_key_id())
        if items is None:
            raise ApiError(404, f"conversation with id '{conversation_id}' not found", param="conversation", code="conversation_not_found")
        return items

    async def extend(self, conversation_id: str, items: list[dict[str, Any]]) -> bool:
        """Appends a response's input and output items; False if the conversation is gone (deleted meanwhile)."""
        return bool(await self._call(cs.append, conversation_id, caller_key_id(), [as_stored_item(i) for i in items]))

    async def _body(self, request: Request) -> dict[str, Any]:
        return parse_json_object(await read_body(request, self.max_body_bytes))

    # ---- the endpoints ----

    async def create(self, request: Request) -> Response:
        """`POST /v1/conversations` with optional `items` (at most 20) and `metadata`."""
        try:
            parsed = validate(ConversationCreate, await self._body(request))
            assert isinstance(parsed, ConversationCreate)
            items = checked_items(parsed.items or [], "items")
            conversation = cs.Conversation(new_id("conv"), self.clock(), dict(parsed.metadata or {}))
            await self._call(cs.create, conversation.conversation_id, caller_key_id(), conversation.created_s, conversation.metadata, items)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(conversation.as_object()), {})

    async def get(self, request: Request) -> Response:
        conversation_id = request.path_params["conversation_id"]
        try:
            found = await self._call(cs.load, conversation_id, caller_key_id())
            if found is None:
                raise _not_found(conversation_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(found.as_object()), {})

    async def update(self, request: Request) -> Response:
        """`POST /v1/conversations/{id}` with `metadata`: replaces it."""
        conversation_id = request.path_params["conversation_id"]
        try:
            parsed = validate(ConversationUpdate, await self._body(request))
            assert isinstance(parsed, ConversationUpdate)
            found = await self._call(cs.set_metadata, conversation_id, caller_key_id(), dict(parsed.metadata or {}))
            if found is None:
                raise _not_found(conversation_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(found.as_object()), {})

    async def delete(self, request: Request) -> Response:
        conversation_id = request.path_params["conversation_id"]
        try:
            if not await self._call(cs.remove, conversation_id, caller_key_id()):
                raise _not_found(conversation_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps({"id": conversation_id, "object": "conversation.deleted", "deleted": True}), {})

    async def list_items(self, request: Request) -> Response:
        """`GET /v1/conversations/{id}/items`: a cursor page, newest first by default (OpenAI's)."""
        conversation_id = request.path_params["conversation_id"]
        try:
            params = page_params(request.query_params, "desc")
            found = await self._call(cs.items_page, conversation_id, caller_key_id(), after=params.after, limit=params.limit, order=params.order)
            if found is None:
                raise _not_found(conversation_id)
            if found == cs.UNKNOWN_CURSOR:
                raise ApiError(400, f"after: no item of this conversation has the id '{params.after}'", param="after", code="invalid_value")
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(page_object(*found)), {})

    async def add_items(self, request: Request) -> Response:
        """`POST /v1/conversations/{id}/items` with `items` (1 to 20): appended in order; answers them as a list."""
        conversation_id = request.path_params["conversation_id"]
        try:
            parsed = validate(ConversationItemsCreate, await self._body(request))
            assert isinstance(parsed, ConversationItemsCreate)
            items = checked_items(parsed.items, "items")
            if not await self._call(cs.append, conversation_id, caller_key_id(), items):
                raise _not_found(conversation_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(page_object(items, False)), {})

    async def get_item(self, request: Request) -> Response:
        conversation_id, item_id = request.path_params["conversation_id"], request.path_params["item_id"]
        try:
            found = await self._call(cs.get_item, conversation_id, caller_key_id(), item_id)
            if found is None:
                raise _not_found(conversation_id)
            if found == "":
                raise ApiError(404, f"conversation '{conversation_id}' has no item with the id '{item_id}'", param="item_id", code="not_found")
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(found), {})

    async def delete_item(self, request: Request) -> Response:
        """`DELETE /v1/conversations/{id}/items/{item_id}`: answers the conversation, as OpenAI's does."""
        conversation_id, item_id = request.path_params["conversation_id"], request.path_params["item_id"]
        try:
            found = await self._call(cs.delete_item, conversation_id, caller_key_id(), item_id)
            if found is None:
                raise _not_found(conversation_id)
            if found is False:
                raise ApiError(404, f"conversation '{conversation_id}' has no item with the id '{item_id}'", param="item_id", code="not_found")
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(found.as_object()), {})
