"""OpenAI's Files API (`/v1/files`, `client.files`): upload, list, retrieve, read and delete files — a batch's input
(`purpose: batch`), and the output and error files a batch writes (`batch_output`). Stored in the request log's
database (storage/files.py); each API key sees only its own.

An upload is bounded before it is read: its body stops at `batches.max_file_bytes` (plus the multipart framing),
then Starlette's parser (python-multipart) splits the form.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.handlers import read_body
from switchboard.gateway.kept import caller_key_id, page_object, page_params, storage_unavailable
from switchboard.gateway.responses import JSONBytesResponse
from switchboard.storage import files as fs

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
"""The purposes a client may upload for (OpenAI's); `batch_output` is the gateway's own."""
MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""The form's framing and its other fields, over the file itself."""
MAX_FILENAME_CHARS = 512
"""What the files table holds of a name."""
MAX_LIST = 10_000
"""OpenAI lists up to this many files a page (its default, too)."""


def _not_found(file_id: str) -> ApiError:
    return ApiError(404, f"no file has the id '{file_id}'", param="file_id", code="not_found")


async def _form_body(body: bytes, request: Request) -> Any:
    """The multipart form of an already-read body."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {k: v for k, v in request.scope.items() if k != "app"}  # without "app", the parser raises its own error type
    try:
        return await Request(scope, replay).form(max_files=1, max_fields=16)
    except HTTPException as exc:
        raise ApiError(400, f"the multipart form cannot be read: {exc.detail}", code="invalid_request") from None
    except Exception as exc:  # noqa: BLE001 — python-multipart's MultiPartException and friends
        raise ApiError(400, f"the multipart form cannot be read: {exc}", code="invalid_request") from None


class Files:
    """The `/v1/files` endpoints over `store` (FileStore, or DisabledFileStore)."""

    def __init__(self, store: Any, max_file_bytes: int, clock: Any = time.time) -> None:
        self.store = store
        self.max_file_bytes = max_file_bytes
        self.clock = clock

    def _check_enabled(self) -> None:
        if not self.store.enabled:
            raise ApiError(400, f"this gateway stores no files ({self.store.why})", code="unsupported_operation")

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(engine, *args, **kwargs)` on the store (a 400 if storage is off, a 503 if its database is down)."""
        self._check_enabled()
        try:
            return await self.store.call(fn, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 — the database is down: say so
            raise storage_unavailable(exc, "file store") from None

    async def upload(self, request: Request) -> Response:
        """`POST /v1/files`, multipart: `file`, `purpose`, and optionally `expires_after[anchor]` ("created_at")
        with `expires_after[seconds]` (3600 to 2592000)."""
        try:
            self._check_enabled()  # before reading what would not be kept
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise ApiError(400, "a file is uploaded as multipart/form-data with the fields 'file' and 'purpose'", code="invalid_request")
            form = await _form_body(await read_body(request, self.max_file_bytes + MULTIPART_OVERHEAD_BYTES), request)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "the form has no file (its field 'file')", param="file", code="missing_required_parameter")
            purpose = form.get("purpose")
            if purpose not in PURPOSES:
                raise ApiError(400, f"purpose must be one of {', '.join(PURPOSES)}", param="purpose", code="invalid_value")
            content = await upload.read()
            await form.close()  # its spooled copy
            if len(content) > self.max_file_bytes:
                raise ApiError(413, f"the file is {len(content)} bytes, over the limit of {self.max_file_bytes}", param="file", code="file_too_large")
            if len(upload.filename or "") > MAX_FILENAME_CHARS:
                raise ApiError(400, f"the file's name is over {MAX_FILENAME_CHARS} characters", param="file", code="invalid_value")
            if purpose == "batch" and not (upload.filename or "").endswith(".jsonl"):
                raise ApiError(400, "a batch's input file must be JSON Lines, named *.jsonl", param="file", code="invalid_file_format")
            now = self.clock()
            file = fs.StoredFile(fs.new_file_id(), caller_key_id(), now, purpose, upload.filename or "file", len(content), _expiry(form, now))
            await self.call(fs.create, file, content)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(file.as_object()), {})

    async def list(self, request: Request) -> Response:
        """`GET /v1/files`: newest first by default, up to 10 000 a page, optionally of one `purpose`."""
        try:
            params = page_params(request.query_params, "desc", default_limit=MAX_LIST, max_limit=MAX_LIST)
            found = await self.call(fs.list_page, caller_key_id(), self.clock(), purpose=request.query_params.get("purpose"),
                                    after=params.after, limit=params.limit, order=params.order)
            if found is None:
                raise ApiError(400, f"no file has the id '{params.after}'", param="after", code="invalid_value")
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(page_object([f.as_object() for f in found[0]], found[1])), {})

    async def get(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        try:
            found = await self.call(fs.load, file_id, caller_key_id(), self.clock())
            if found is None:
                raise _not_found(file_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(found.as_object()), {})

    async def content(self, request: Request) -> Response:
        """`GET /v1/files/{id}/content`: the file's bytes as uploaded (or as the batch wrote them)."""
        file_id = request.path_params["file_id"]
        try:
            found = await self.call(fs.content, file_id, caller_key_id(), self.clock())
            if found is None:
                raise _not_found(file_id)
        except ApiError as exc:
            return error_response(exc)
        return Response(found, media_type="application/octet-stream")

    async def delete(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        try:
            if not await self.call(fs.remove, file_id, caller_key_id(), self.clock()):
                raise _not_found(file_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps({"id": file_id, "object": "file", "deleted": True}), {})


def _expiry(form: Any, now_s: float) -> float | None:
    """When the uploaded file expires (`expires_after[...]`), or None."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise ApiError(400, "expires_after[anchor] must be 'created_at'", param="expires_after.anchor", code="invalid_value")
    try:
        num_s = int(seconds or "")
    except ValueError:
        raise ApiError(400, "expires_after[seconds] must be an integer", param="expires_after.seconds", code="invalid_value") from None
    if not 3600 <= num_s <= 30 * 86400:
        raise ApiError(400, "expires_after[seconds] must be between 3600 and 2592000", param="expires_after.seconds", code="invalid_value")
    return now_s + num_s
