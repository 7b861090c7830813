"""The `/v1/batches` endpoints (`client.batches`): create, retrieve, cancel, list. A batch is made `validating`; the
runner (runner.py) takes it from there. Each API key sees only its own batches.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.gateway.batches.lines import COMPLETION_WINDOWS
from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.files import Files
from switchboard.gateway.handlers import read_body
from switchboard.gateway.kept import caller_key_id, page_object, page_params
from switchboard.gateway.requests import parse_json_object, validate
from switchboard.gateway.responses import JSONBytesResponse
from switchboard.gateway.schemas import BatchCreate
from switchboard.storage import batches as bs
from switchboard.storage import files as fs

MAX_CREATE_BYTES = 64 * 1024
"""A create's body is an id, an endpoint and 16 metadata pairs at most: far below this."""
FINAL = ("completed", "failed", "expired", "cancelled")


def _not_found(batch_id: str) -> ApiError:
    return ApiError(404, f"no batch has the id '{batch_id}'", param="batch_id", code="not_found")


def new_batch(parsed: BatchCreate, now_s: float) -> dict[str, Any]:
    """A new batch's object, `validating`."""
    body: dict[str, Any] = {
        "id": f"batch_{os.urandom(16).hex()}", "object": "batch", "endpoint": parsed.endpoint, "errors": None,
        "input_file_id": parsed.input_file_id, "completion_window": parsed.completion_window, "status": "validating",
        "output_file_id": None, "error_file_id": None, "created_at": int(now_s), "in_progress_at": None,
        "expires_at": int(now_s + COMPLETION_WINDOWS[parsed.completion_window]), "finalizing_at": None, "completed_at": None,
        "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": dict(parsed.metadata) if parsed.metadata is not None else None,
    }
    if parsed.output_expires_after is not None:
        body["output_expires_after"] = parsed.output_expires_after.model_dump()
    return body


class Batches:
    """The `/v1/batches` endpoints. `files` reads the input file (and says when storage is off); `wake` tells the
    runner a batch was made."""

    def __init__(self, files: Files, wake: Any, clock: Any = time.time) -> None:
        self.files = files
        self.wake = wake
        self.clock = clock

    async def create(self, request: Request) -> Response:
        try:
            parsed = validate(BatchCreate, parse_json_object(await read_body(request, MAX_CREATE_BYTES)))
            assert isinstance(parsed, BatchCreate)
            key_id = caller_key_id()
            file = await self.files.call(fs.load, parsed.input_file_id, key_id, self.clock())
            if file is None:
                raise ApiError(400, f"no file has the id '{parsed.input_file_id}'", param="input_file_id", code="invalid_value")
            if file.purpose != "batch":
                raise ApiError(400, f"the file '{file.file_id}' was uploaded for '{file.purpose}', not 'batch'", param="input_file_id",
                               code="invalid_value")
            now = self.clock()
            body = new_batch(parsed, now)
            await self.files.call(bs.create, body, key_id, now)
        except ApiError as exc:
            return error_response(exc)
        self.wake()
        return JSONBytesResponse(orjson.dumps(body), {})

    async def get(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        try:
            found = await self.files.call(bs.load, batch_id, caller_key_id())
            if found is None:
                raise _not_found(batch_id)
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(found), {})

    async def cancel(self, request: Request) -> Response:
        """`POST /v1/batches/{id}/cancel`: a running batch becomes `cancelling`, then `cancelled` once its requests in
        flight end (what finished is in its output); a 409 for a batch that already ended."""
        batch_id = request.path_params["batch_id"]
        try:
            found = await self.files.call(bs.request_cancel, batch_id, caller_key_id(), self.clock())
            if found is None:
                raise _not_found(batch_id)
            if found["status"] in FINAL:
                raise ApiError(409, f"the batch '{batch_id}' has ended ({found['status']}); it cannot be cancelled", code="batch_ended")
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(found), {})

    async def list(self, request: Request) -> Response:
        """`GET /v1/batches`: newest first, `limit` (1..100, default 20) and `after`."""
        try:
            params = page_params(request.query_params, "desc")
            found = await self.files.call(bs.list_page, caller_key_id(), after=params.after, limit=params.limit)
            if found is None:
                raise ApiError(400, f"no batch has the id '{params.after}'", param="after", code="invalid_value")
        except ApiError as exc:
            return error_response(exc)
        return JSONBytesResponse(orjson.dumps(page_object(*found)), {})
