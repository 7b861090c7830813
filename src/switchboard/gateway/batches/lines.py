"""A batch's input file and its output lines, in OpenAI's Batch API format; pure functions.

Input: JSON Lines, one request a line — `{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions",
"body": {...}}` — every `url` the batch's endpoint, every `custom_id` unique. Output: a line per request, in the
output file if it was answered with a 2xx, in the error file if it was answered with an error (`response` holds
it) or could not be run to an answer (`error` says why: the batch cancelled or expired first), as at OpenAI.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import orjson

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
"""The endpoints a batch may run (OpenAI's, less those this gateway does not serve)."""
COMPLETION_WINDOWS = {"24h": 24 * 3600.0}
MAX_ERRORS = 100
"""A failed validation reports at most this many of its lines' errors."""


@dataclasses.dataclass(frozen=True)
class BatchRequest:
    line: int  # the request's index among the file's requests (blank lines skipped), from 0
    custom_id: str
    body: bytes  # the request body, JSON


@dataclasses.dataclass(frozen=True)
class LineError:
    code: str
    message: str
    line: int | None = None  # the file's line number, from 1
    param: str | None = None

    def as_object(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


def parse_input(content: bytes, endpoint: str, max_requests: int) -> tuple[list[BatchRequest], list[LineError]]:
    """The requests of a batch's input file, or what is wrong with it (at most `MAX_ERRORS` errors; the batch
    fails if there is any)."""
    try:
        text = content.decode("utf-8-sig")  # a byte-order mark, as some editors write one, is not part of line 1
    except UnicodeDecodeError as exc:
        return [], [LineError("invalid_file", f"the input file is not UTF-8 text: {exc}")]
    requests: list[BatchRequest] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(errors) >= MAX_ERRORS:
            break
        error, request = _parse_line(raw, number, len(requests), endpoint, seen)
        if error is not None:
            errors.append(error)
        elif request is not None:
            requests.append(request)
    if not requests and not errors:
        errors.append(LineError("empty_file", "the input file has no requests"))
    if len(requests) > max_requests:
        errors.append(LineError("too_many_requests", f"the input file has {len(requests)} requests; a batch may have at most {max_requests}"))
    return requests, errors


def _parse_line(raw: str, number: int, index: int, endpoint: str, seen: set[str]) -> tuple[LineError | None, BatchRequest | None]:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return LineError("invalid_json_line", f"line {number} is not JSON: {exc}", number), None
    if not isinstance(line, dict):
        return LineError("invalid_json_line", f"line {number} is not a JSON object", number), None
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError("missing_required_parameter", f"line {number} has no custom_id (a non-empty string)", number, "custom_id"), None
    if custom_id in seen:
        return LineError("duplicate_custom_id", f"line {number}: the custom_id '{custom_id}' is on an earlier line too", number, "custom_id"), None
    seen.add(custom_id)
    if line.get("method") != "POST":
        return LineError("invalid_method", f"line {number}: method must be 'POST'", number, "method"), None
    if line.get("url") != endpoint:
        return LineError("mismatched_endpoint", f"line {number}: url {line.get('url')!r} is not the batch's endpoint '{endpoint}'", number, "url"), None
    body = line.get("body")
    if not isinstance(body, dict):
        return LineError("invalid_body", f"line {number}: body must be a JSON object (the request)", number, "body"), None
    if body.get("stream"):
        return LineError("invalid_body", f"line {number}: a batch's requests cannot stream (body.stream)", number, "body.stream"), None
    unknown = set(line) - {"custom_id", "method", "url", "body"}
    if unknown:
        return LineError("invalid_json_line", f"line {number}: unknown fields {sorted(unknown)}", number), None
    return None, BatchRequest(index, custom_id, orjson.dumps(body))


def _line_id() -> str:
    return f"batch_req_{os.urandom(16).hex()}"


def answered_line(custom_id: str, status: int, request_id: str | None, body: Any) -> dict[str, Any]:
    """The output line of a request the gateway answered (`status` and `body` are the answer's)."""
    return {"id": _line_id(), "custom_id": custom_id, "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}


def failed_line(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """The error-file line of a request that was not run to an answer."""
    return {"id": _line_id(), "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
