"""`POST /v1/feedback {"request_id", "score"}`: a user's score (0..1) of one answer, stored in the request log
and, with online learning on, learned by the caller's tenant's router corrections (switchboard.online).

Bounded before it is read: a declared length over 64 KiB is refused (413) without reading a byte, and a body
that streams past it is cut off there. With auth on, only an API key reaches here (401 without one, 403 for the
admin key: `AuthMiddleware`), and a key may only score its own requests (404 otherwise, the same answer as for an
unknown id, so one tenant cannot probe another's request ids).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from switchboard.gateway import schemas as s
from switchboard.gateway.auth import current_caller
from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.handlers import read_body
from switchboard.gateway.responses_api.ids import logged_request_id

if TYPE_CHECKING:
    from switchboard.online import OnlineLearner

log = logging.getLogger("switchboard.gateway")
MAX_FEEDBACK_BODY_BYTES = 64 * 1024


class FeedbackEndpoint:
    def __init__(self, request_log: Any, online: "OnlineLearner | None" = None) -> None:
        self.request_log = request_log
        self.online = online

    async def post(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except ApiError as exc:
            return error_response(exc)

    async def _handle(self, request: Request) -> Response:
        if not self.request_log.enabled:
            raise ApiError(503, "feedback needs the request log, which is disabled (storage.enabled: false)", code="storage_disabled")
        raw = await read_body(request, MAX_FEEDBACK_BODY_BYTES)
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
        request_id = logged_request_id(feedback.request_id)  # a Response's id names its chat request's row
        try:
            caller = current_caller.get()  # with auth on, a key may only score its own requests
            known = await self.request_log.knows(request_id, caller.key.key_id if caller else None)
        except Exception as exc:  # noqa: BLE001 — the database is down: say so, do not guess
            log.warning("feedback: request log unavailable: %s", exc)
            raise ApiError(503, "the request log is unavailable; retry later", code="storage_unavailable", headers={"retry-after": "5"}) from None
        if not known:
            raise ApiError(404, f"no logged request has the id '{feedback.request_id}'", param="request_id", code="request_not_found")
        feedback_id = self.request_log.add_feedback(request_id, feedback.score)
        if self.online is not None:
            await self._learn(request_id, feedback.score, caller)
        body = {"id": feedback_id, "object": "feedback", "request_id": feedback.request_id, "score": feedback.score}
        return Response(orjson.dumps(body), status_code=201, media_type="application/json")

    async def _learn(self, request_id: str, score: float, caller: Any) -> None:
        """Feeds the score to the caller's tenant's corrections. The feedback is stored whatever happens here:
        a failure to learn is logged, never the client's problem."""
        from switchboard.online import ANONYMOUS

        assert self.online is not None
        tenant = ANONYMOUS if caller is None else caller.key.tenant
        try:
            found = await self.request_log.prompt_and_expert(request_id)
            if found is None:
                log.info("feedback for %s: not learned (its request's row is not in the log)", request_id)
                return
            if not found[0]:
                log.info("feedback for %s: not learned (its request has no prompt text: token ids, or prompts not stored)", request_id)
                return
            outcome = await asyncio.to_thread(self.online.learn, tenant, found[0], found[1], score)
        except Exception as exc:  # noqa: BLE001 — learning is best effort; the score itself is stored
            log.warning("feedback for %s: not learned (%s: %s)", request_id, type(exc).__name__, exc)
            return
        log.debug("feedback for %s: %s", request_id, outcome.value)
