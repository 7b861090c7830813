"""`POST /v1/feedback {"request_id", "score"}`: a user's score (0..1) of one answer, stored in the request log."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from switchboard.gateway import schemas as s
from switchboard.gateway.auth import current_caller
from switchboard.gateway.errors import ApiError, error_response

log = logging.getLogger("switchboard.gateway")
MAX_FEEDBACK_BODY_BYTES = 64 * 1024


class FeedbackEndpoint:
    def __init__(self, request_log: Any) -> None:
        self.request_log = request_log

    async def post(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except ApiError as exc:
            return error_response(exc)

    async def _handle(self, request: Request) -> Response:
        if not self.request_log.enabled:
            raise ApiError(503, "feedback needs the request log, which is disabled (storage.enabled: false)", code="storage_disabled")
        raw = await request.body()
        if len(raw) > MAX_FEEDBACK_BODY_BYTES:
            raise ApiError(413, f"request body is over the limit of {MAX_FEEDBACK_BODY_BYTES} bytes", code="body_too_large")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object with request_id and score", code="invalid_request")
        try:
            feedback = s.FeedbackRequest.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise ApiError(400, f"{param}: {err['msg']}" if param else err["msg"], param=param, code="invalid_value") from None
        try:
            caller = current_caller.get()  # with auth on, a key may only score its own requests
            known = await self.request_log.knows(feedback.request_id, caller.key.key_id if caller else None)
        except Exception as exc:  # noqa: BLE001 — the database is down: say so, do not guess
            log.warning("feedback: request log unavailable: %s", exc)
            raise ApiError(503, "the request log is unavailable; retry later", code="storage_unavailable", headers={"retry-after": "5"}) from None
        if not known:
            raise ApiError(404, f"no logged request has the id '{feedback.request_id}'", param="request_id", code="request_not_found")
        feedback_id = self.request_log.add_feedback(feedback.request_id, feedback.score)
        body = {"id": feedback_id, "object": "feedback", "request_id": feedback.request_id, "score": feedback.score}
        return Response(orjson.dumps(body), status_code=201, media_type="application/json")
