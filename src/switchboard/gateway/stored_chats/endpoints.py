"""The stored-completions endpoints, and the keeping of an answer whose request said `store: true`.

An answer is stored before the client has all of it (a whole answer before it is sent; a stream before its last
chunk), so a `retrieve` sent the moment the answer arrives finds it. A failed or cut-off answer is not stored; a
store whose database is down costs the answer nothing (it goes out unstored, which is logged).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.handlers import read_body
from switchboard.gateway.kept import caller_key_id, list_page, page_object, page_params, storage_unavailable
from switchboard.gateway.requests import parse_json_object, validate
from switchboard.gateway.responses import SSE_DONE, JSONBytesResponse, SSEResponse
from switchboard.gateway.schemas import ChatCompletionUpdate
from switchboard.gateway.stored_chats.assemble import ChatAssembler
from switchboard.storage.chat_completions import StoredRow
from switchboard.storage.kept import StoreUnavailable

log = logging.getLogger("switchboard.gateway")
_METADATA_PARAM = re.compile(r"metadata\[(.+)\]\Z")
MAX_UPDATE_BYTES = 64 * 1024
"""An update's body holds at most 16 metadata pairs of 64 + 512 characters: far below this."""


def _not_found(completion_id: str, why: str = "") -> ApiError:
    return ApiError(404, f"no stored chat completion has the id '{completion_id}'" + (f" (this gateway stores none: {why})" if why else ""),
                    param="completion_id", code="not_found")


def _unavailable(exc: Exception) -> ApiError:
    return storage_unavailable(exc, "chat completion store")


def stored_messages(completion_id: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's messages as OpenAI lists a stored completion's: each with an id; content given as parts is
    kept in `content_parts`, its text joined in `content`."""
    out = []
    for i, message in enumerate(messages):
        stored = {**message, "id": f"{completion_id}-{i}"}
        content = message.get("content")
        if isinstance(content, list):
            texts = [part.get("text") or "" for part in content if isinstance(part, dict) and part.get("type") == "text"]
            stored["content"], stored["content_parts"] = ("".join(texts) if texts else None), content
        else:
            stored["content_parts"] = None
        out.append(stored)
    return out


def _event(chunk: dict[str, Any] | bytes | None, request_id: str) -> bytes:
    """One assembled event as SSE bytes: a chunk with the request's id, `[DONE]` (None), or bytes as they came."""
    if chunk is None:
        return SSE_DONE
    if isinstance(chunk, bytes):
        return b"data: " + chunk + b"\n\n"
    return b"data: " + orjson.dumps({**chunk, "id": request_id} if "id" in chunk else chunk) + b"\n\n"


class StoredChats:
    """Keeps answers (`keep`) in `store` (storage/chat_completions.py: ChatCompletionStore, or
    DisabledChatCompletionStore) and serves OpenAI's stored-completions API over it."""

    def __init__(self, store: Any, max_body_bytes: int, clock: Any = time.time) -> None:
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.clock = clock

    # ---- keeping ----

    def tap(self) -> ChatAssembler | None:
        """What a streamed answer to keep is assembled in (None when nothing is stored)."""
        return ChatAssembler() if self.store.enabled else None

    async def keep(self, response: Response, body: dict[str, Any], tap: ChatAssembler | None) -> Response:
        """`response` to the chat request `body` (which said `store: true`), kept: a whole answer now, a stream
        (assembled in `tap`) before its last chunk goes out. Errors pass as they are.

        The answer's id is the gateway's request id (`x-request-id`), under which it is stored: an upstream's
        answer relayed as it came (whose ids are the upstream's, and not always unique: some servers number them)
        gets that id instead, in its body or in every chunk."""
        if not self.store.enabled:
            return response
        request_id = response.headers.get("x-request-id") if isinstance(response, (JSONBytesResponse, SSEResponse)) else None
        if request_id is None:  # an error answer
            return response
        key_id = caller_key_id()  # read now: the stream is sent later
        if isinstance(response, JSONBytesResponse):
            completion = orjson.loads(response.body)
            if completion.get("id") != request_id:
                completion["id"] = request_id
                response.body = orjson.dumps(completion)
            await self._save(completion, body, key_id)
        elif tap is not None:
            response.chunks = self._kept_stream(response.chunks, body, tap, request_id, key_id)
        return response

    async def _kept_stream(self, chunks: AsyncIterator[bytes], body: dict[str, Any], tap: ChatAssembler, request_id: str,
                           key_id: str | None) -> AsyncIterator[bytes]:
        """The stream, passed on event by event as `tap` assembles it (each chunk carrying the request id), and
        stored before its last event goes out."""
        try:
            async for chunk in chunks:
                out = b"".join(_event(c, request_id) for c in tap.feed(chunk))
                if out.endswith(SSE_DONE) and tap.is_complete:
                    await self._save({**tap.completion(), "id": request_id}, body, key_id)
                if out:
                    yield out
        finally:
            await chunks.aclose()

    async def _save(self, completion: dict[str, Any], body: dict[str, Any], key_id: str | None) -> None:
        completion_id = completion["id"]
        completion = {**completion, "metadata": body.get("metadata") or {}}
        row = StoredRow(completion_id, key_id, self.clock(), str(completion.get("model") or ""), completion,
                        stored_messages(completion_id, body.get("messages") or []))
        try:
            await self.store.save(row)
        except StoreUnavailable:  # the database failed a moment ago (that was logged): not tried
            pass
        except Exception as exc:  # noqa: BLE001 — the answer stands; it just cannot be retrieved
            log.warning("stored chat completions: %s not stored (%s: %s)", completion_id, type(exc).__name__, exc)

    # ---- the API ----

    async def _stored(self, completion_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if not self.store.enabled:
            raise _not_found(completion_id, self.store.why)
        try:
            found = await self.store.load(completion_id, caller_key_id())
        except Exception as exc:  # noqa: BLE001 — the database is down: say so
            raise _unavailable(exc) from None
        if found is None:
            raise _not_found(completion_id)
        return found

    async def list(self, request: Request) -> Response:
        """`GET /v1/chat/completions`: this key's stored completions, oldest first by default (OpenAI's), filtered
        by `model` (the expert that answered) and `metadata[k]=v` pairs (all must match)."""
        try:
            if not self.store.enabled:
                raise ApiError(400, f"this gateway stores no chat completions ({self.store.why})", code="unsupported_operation")
            query = request.query_params
            params = page_params(query, "asc")
            metadata = {m.group(1): v for k, v in query.items() if (m := _METADATA_PARAM.match(k))}
            try:
                found = await self.store.page(caller_key_id(), model=query.get("model"), metadata=metadata, after=params.after,
                                              limit=params.limit, order=params.order)
            except Exception as exc:  # noqa: BLE001
                raise _unavailable(exc) from None
            if found is None:
                raise ApiError(400, f"after: no stored chat completion of yours has the id '{params.after}'", param="after", code="invalid_value")
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(page_object(*found)), {})

    async def get(self, request: Request) -> Response:
        """`GET /v1/chat/completions/{id}`: the completion as answered (a stream as it added up), with its metadata."""
        try:
            completion, _ = await self._stored(request.path_params["completion_id"])
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(completion), {})

    async def messages(self, request: Request) -> Response:
        """`GET /v1/chat/completions/{id}/messages`: the request's messages, a cursor page (oldest first by default)."""
        try:
            params = page_params(request.query_params, "asc")
            _, messages = await self._stored(request.path_params["completion_id"])
            body = list_page(messages, params, "message of this chat completion")
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(body), {})

    async def update(self, request: Request) -> Response:
        """`POST /v1/chat/completions/{id}` with `{"metadata": {...}}`: replaces the metadata (OpenAI's only update)."""
        completion_id = request.path_params["completion_id"]
        try:
            body = parse_json_object(await read_body(request, min(self.max_body_bytes, MAX_UPDATE_BYTES)))
            parsed = validate(ChatCompletionUpdate, body)  # metadata only (OpenAI's only update), within its limits
            assert isinstance(parsed, ChatCompletionUpdate)
            metadata = parsed.metadata or {}
            if not self.store.enabled:
                raise _not_found(completion_id, self.store.why)
            try:
                updated = await self.store.set_metadata(completion_id, caller_key_id(), metadata)
            except Exception as exc:  # noqa: BLE001
                raise _unavailable(exc) from None
            if updated is None:
                raise _not_found(completion_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(updated), {})

    async def delete(self, request: Request) -> Response:
        """`DELETE /v1/chat/completions/{id}`: removes a stored completion (404 if there is none of this key's)."""
        completion_id = request.path_params["completion_id"]
        try:
            if not self.store.enabled:
                raise _not_found(completion_id, self.store.why)
            try:
                removed = await self.store.remove(completion_id, caller_key_id())
            except Exception as exc:  # noqa: BLE001
                raise _unavailable(exc) from None
            if not removed:
                raise _not_found(completion_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps({"object": "chat.completion.deleted", "id": completion_id, "deleted": True}), {})
