"""Structured JSON logs: one JSON object per line, with the id of the request being served (the same id the
gateway returns in `x-request-id`) on every line logged while serving it.

`configure(level, json_format=True)` installs the formatter on the root logger (and uvicorn's); the gateway
sets `request_id_var` when a request gets its id, and the context variable follows the request into the
streaming task. Nothing is configured at import.
"""

from __future__ import annotations

import contextvars
import logging
import time
from typing import Any

import orjson

from switchboard.engines.base import Usage

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("switchboard_request_id", default="")
key_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("switchboard_key_id", default="")  # the API key's id, never its secret
access_log = logging.getLogger("switchboard.access")

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", "request_id"?, "key_id"?, ...extra fields, "exc"?}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            out["request_id"] = request_id
        key_id = key_id_var.get()
        if key_id:
            out["key_id"] = key_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(level: str = "info", *, json_format: bool = True) -> None:
    """Sends every log line (ours and uvicorn's) to stderr, as JSON or as plain text."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv = logging.getLogger(name)
        uv.handlers[:] = []
        uv.propagate = True


def access(request_id: str, expert_id: str, replica_id: str, outcome: str, status: int, duration_s: float,
           ttft_s: float | None, usage: Usage | None, usd: float, was_cold: bool) -> None:
    """One line per finished request (only when the access log is on: it costs ~10 µs a request)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "request_id": request_id, "expert": expert_id, "replica": replica_id, "outcome": outcome, "status": status,
        "duration_ms": round(duration_s * 1000, 3), "cold_start": was_cold,
    }
    if ttft_s is not None:
        fields["ttft_ms"] = round(ttft_s * 1000, 3)
    if usage is not None:
        fields.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, usd=usd)
        if usage.cached_prompt_tokens is not None:
            fields["cached_prompt_tokens"] = usage.cached_prompt_tokens
    access_log.info("request", extra=fields)
