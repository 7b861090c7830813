"""The `openai` backend: any OpenAI-compatible upstream (vLLM, llama.cpp server, Ollama, TGI, a hosted API).

One pooled aiohttp session per engine (chosen over httpx by measurement: benchmarks/gateway_overhead.py
reports both clients against the same upstream). Streams are relayed chunk by chunk as they arrive; nothing
is buffered beyond one SSE line.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from switchboard.engines.base import (
    Completion,
    EngineBadResponse,
    EngineError,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    Finish,
    GenerationRequest,
    StreamEvent,
    TextDelta,
    Usage,
)
from switchboard.types import FinishReason

_PATHS = {"chat": "/chat/completions", "completion": "/completions"}


class OpenAIUpstreamEngine:
    """Talks to one OpenAI-compatible base URL. Safe for concurrent use from one event loop."""

    def __init__(
        self,
        expert_id: str,
        base_url: str,
        upstream_model: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 120.0,
        max_connections: int = 256,
    ) -> None:
        self.expert_id = expert_id
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, expert_id: str, backend: Any, environ: dict[str, str] | None = None) -> "OpenAIUpstreamEngine":
        environ = os.environ if environ is None else environ
        api_key = environ.get(backend.api_key_env) if backend.api_key_env else None
        return cls(
            expert_id,
            backend.base_url,
            backend.model or expert_id,
            api_key=api_key,
            connect_timeout_s=backend.connect_timeout_s,
            read_timeout_s=backend.read_timeout_s,
            max_connections=backend.max_connections,
        )

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers, json_serialize=_dumps_str
            )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _payload(self, request: GenerationRequest, stream: bool) -> bytes:
        body = dict(request.body)
        body.pop("routing", None)
        body["model"] = self.upstream_model
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream_options", None)
        return orjson.dumps(body)

    async def _post(self, request: GenerationRequest, stream: bool) -> aiohttp.ClientResponse:
        await self.start()
        assert self._session is not None
        url = self.base_url + _PATHS[request.kind]
        try:
            response = await self._session.post(url, data=self._payload(request, stream))
        except aiohttp.ConnectionTimeoutError as exc:
            raise EngineTimeout(self.expert_id, f"no connection to {self.base_url} within the connect timeout") from exc
        except asyncio.TimeoutError as exc:
            raise EngineTimeout(self.expert_id, f"{self.base_url} sent no answer (read timeout)") from exc
        except aiohttp.ClientConnectionError as exc:
            raise EngineUnavailable(self.expert_id, f"cannot connect to {self.base_url}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise EngineBadResponse(self.expert_id, f"request to {self.base_url} failed: {exc}") from exc
        if response.status >= 400:
            try:
                raise await self._error_for(response)
            finally:
                response.release()
        return response

    async def _error_for(self, response: aiohttp.ClientResponse) -> EngineError:
        try:
            raw = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            raw = b""
        message = _upstream_message(raw) or response.reason or "no message"
        status = response.status
        if status in (401, 403):
            return EngineBadResponse(self.expert_id, f"upstream refused our credentials ({status}): {message}")
        if status == 429:
            return EngineUnavailable(self.expert_id, f"upstream is rate limiting (429): {message}", status=503)
        if 400 <= status < 500:
            return EngineRejected(self.expert_id, f"upstream rejected the request ({status}): {message}")
        if status in (502, 503):
            return EngineUnavailable(self.expert_id, f"upstream unavailable ({status}): {message}")
        if status == 504:
            return EngineTimeout(self.expert_id, f"upstream timed out (504): {message}")
        return EngineBadResponse(self.expert_id, f"upstream failed ({status}): {message}")

    async def complete(self, request: GenerationRequest) -> Completion:
        response = await self._post(request, stream=False)
        try:
            raw = await response.read()
        except asyncio.TimeoutError as exc:
            raise EngineTimeout(self.expert_id, "upstream stopped sending its answer (read timeout)") from exc
        except aiohttp.ClientError as exc:
            raise EngineUnavailable(self.expert_id, f"upstream connection lost: {exc}") from exc
        finally:
            response.release()
        try:
            data = orjson.loads(raw)
            choice = data["choices"][0]
            text = _choice_text(choice, request.kind)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise EngineBadResponse(self.expert_id, f"upstream answer is not an OpenAI completion: {raw[:200]!r}") from exc
        usage = _usage(data.get("usage"), request, text)
        finish = Finish(_finish_reason(choice.get("finish_reason")), usage)
        return Completion(text, finish, raw_choice=choice if request.kind == "chat" else None)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        response = await self._post(request, stream=True)
        if not response.content_type.startswith("text/event-stream"):
            try:
                raw = await response.content.read(200)
            finally:
                response.release()
            raise EngineBadResponse(
                self.expert_id, f"upstream answer is not an OpenAI event stream ({response.content_type}): {raw!r}"
            )
        finish_reason: str | None = None
        usage_raw: dict[str, Any] | None = None
        num_deltas = 0
        parts_len = 0
        try:
            while True:
                try:
                    line = await response.content.readline()
                except asyncio.TimeoutError as exc:
                    raise EngineTimeout(self.expert_id, "upstream stream stalled (read timeout)") from exc
                except aiohttp.ClientError as exc:
                    raise EngineUnavailable(self.expert_id, f"upstream stream broke: {exc}") from exc
                if not line:
                    raise EngineBadResponse(self.expert_id, "upstream stream ended without [DONE]")
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError as exc:
                    raise EngineBadResponse(self.expert_id, f"upstream sent a malformed chunk: {payload[:200]!r}") from exc
                if not isinstance(chunk, dict):
                    raise EngineBadResponse(self.expert_id, f"upstream sent a malformed chunk: {payload[:200]!r}")
                if "error" in chunk:
                    raise EngineBadResponse(self.expert_id, f"upstream error mid-stream: {_upstream_message(payload)}")
                if chunk.get("usage"):
                    usage_raw = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                    if request.kind == "chat":
                        delta = choice.get("delta") or {}
                        text = delta.get("content") or ""
                        if text or len(delta) > (1 if "role" in delta else 0):
                            num_deltas += 1
                            parts_len += len(text)
                            yield TextDelta(text, raw_delta=delta)
                    else:
                        text = choice.get("text") or ""
                        if text:
                            num_deltas += 1
                            parts_len += len(text)
                            yield TextDelta(text)
        finally:
            response.release()
        if usage_raw is None:
            usage = Usage(request.num_prompt_tokens_estimate, num_deltas)
        else:
            usage = _usage(usage_raw, request, "")
        yield Finish(_finish_reason(finish_reason), usage)


def _dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _choice_text(choice: dict[str, Any], kind: str) -> str:
    if kind == "chat":
        return choice["message"].get("content") or ""
    return choice["text"]


def _finish_reason(raw: Any) -> FinishReason:
    return FinishReason.LENGTH if raw == "length" else FinishReason.STOP


def _usage(raw: Any, request: GenerationRequest, text: str) -> Usage:
    if isinstance(raw, dict) and isinstance(raw.get("prompt_tokens"), int):
        return Usage(raw["prompt_tokens"], int(raw.get("completion_tokens") or 0))
    # Upstreams that report no usage still get an honest estimate rather than zeros.
    return Usage(request.num_prompt_tokens_estimate, max(1, len(text) // 4) if text else 0)


def _upstream_message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    return str(data)[:200]
