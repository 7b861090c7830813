"""OpenAI-style error answers: `{"error": {"message", "type", "param", "code"}}` with the right status."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An answer that is an error. Raised anywhere below a handler, rendered by `error_response`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def model_not_found(model: str) -> ApiError:
    """OpenAI's 404 for a model (an expert id) this gateway does not serve."""
    return ApiError(404, f"the model '{model}' does not exist; see GET /v1/models", param="model", code="model_not_found")


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


def error_response(exc: ApiError, extra_headers: dict[str, str] | None = None) -> Response:
    headers = dict(exc.headers)
    if extra_headers:
        headers.update(extra_headers)
    return Response(
        orjson.dumps(error_body(exc.status, exc.message, exc.param, exc.code)),
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )
