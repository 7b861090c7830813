"""An `openai`-kind embedding expert: `POST {base_url}/embeddings` on any OpenAI-compatible upstream.

Pass-through: the client's body goes up as sent but for `model` (the upstream's name for it), unknown fields
included; the upstream's answer comes back as sent but for `model` (the expert id). Embeddings are not the
streaming hot path, so this uses httpx (http and https alike) rather than the generation engines' own client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from switchboard.config.schema import OpenAIBackend
from switchboard.embeddings.base import EmbeddingAnswer, EmbeddingRequest, UpstreamRateLimited
from switchboard.engines.base import (
    EngineBadResponse,
    EngineError,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)
from switchboard.engines.openai_upstream import upstream_message

CHARS_PER_TOKEN = 4
"""For admission against per-key token limits before the upstream has counted; its `usage` settles the meter."""


class OpenAIEmbeddingEngine:
    def __init__(self, expert_id: str, base_url: str, upstream_model: str, *, api_key: str | None = None,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 120.0, max_connections: int = 256) -> None:
        self.expert_id = expert_id
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_config(cls, expert_id: str, backend: OpenAIBackend, environ: Mapping[str, str] | None = None) -> "OpenAIEmbeddingEngine":
        environ = os.environ if environ is None else environ
        return cls(expert_id, backend.base_url, backend.model or expert_id,
                   api_key=environ.get(backend.api_key_env) if backend.api_key_env else None,
                   connect_timeout_s=backend.connect_timeout_s, read_timeout_s=backend.read_timeout_s,
                   max_connections=backend.max_connections)

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout, limits=self._limits)

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def count_tokens(self, request: EmbeddingRequest) -> int:
        if request.token_ids is not None:
            return sum(len(ids) for ids in request.token_ids)
        return sum((len(t) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN for t in request.texts or ())

    async def embed(self, request: EmbeddingRequest) -> EmbeddingAnswer:
        await self.start()
        assert self._client is not None
        body = dict(request.body)
        body["model"] = self.upstream_model
        url = self.base_url + "/embeddings"
        try:
            response = await self._client.post(url, content=orjson.dumps(body))
        except httpx.ConnectTimeout as exc:
            raise EngineTimeout(self.expert_id, f"no connection to {self.base_url} within the connect timeout") from exc
        except httpx.TimeoutException as exc:
            raise EngineTimeout(self.expert_id, f"{self.base_url} sent no answer (read timeout)") from exc
        except httpx.HTTPError as exc:
            raise EngineUnavailable(self.expert_id, f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise self._error_for(response)
        try:
            answer = orjson.loads(response.content)
            num_prompt = _prompt_tokens(answer)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise EngineBadResponse(self.expert_id, f"upstream answer is not an OpenAI embeddings list: {response.content[:200]!r}") from exc
        if num_prompt is None:
            num_prompt = self.count_tokens(request)  # an upstream that reports no usage: the estimate admission used
        return EmbeddingAnswer(answer, num_prompt)

    def _error_for(self, response: httpx.Response) -> EngineError:
        message = upstream_message(response.content, bare_json_chars=500) or response.reason_phrase
        status = response.status_code
        if status == 429:
            return UpstreamRateLimited(self.expert_id, f"upstream is rate limiting (429): {message}", _retry_after_s(response.headers))
        if status in (401, 403):
            return EngineBadResponse(self.expert_id, f"upstream refused our credentials ({status}): {message}")
        if status < 500:
            return EngineRejected(self.expert_id, f"upstream rejected the request ({status}): {message}", status=status if status in (400, 404, 413, 422) else 400)
        if status in (502, 503):
            return EngineUnavailable(self.expert_id, f"upstream unavailable ({status}): {message}")
        if status == 504:
            return EngineTimeout(self.expert_id, f"upstream timed out (504): {message}")
        return EngineBadResponse(self.expert_id, f"upstream failed ({status}): {message}")


def _prompt_tokens(answer: Any) -> int | None:
    """The upstream's `usage.prompt_tokens`, None if it gave none. Raises ValueError if `answer` is not an
    embeddings list."""
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        raise ValueError("no data list")
    usage = answer.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and tokens >= 0 else None


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds (the delta-seconds form; OpenAI also sends `retry-after-ms`)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None
