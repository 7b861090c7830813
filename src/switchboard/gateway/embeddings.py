"""`POST /v1/embeddings`: validate, find the embedding expert, admit against the caller's key, embed, log.

Embedding experts live beside the generation fleet, not in it: they are named by the request (never routed
or failed over between, since vectors of different models are not comparable) and have no replicas for the
control plane to scale. API keys' rate limits, token limits and budgets apply as they do to generation (the
token count is the expert's own: exact for a local model, an estimate settled by the upstream's `usage`
otherwise); every request is one row of the request log (kind `embedding`) and one metrics record.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.config.schema import SwitchboardConfig
from switchboard.embeddings.base import EmbeddingEngine, EmbeddingRequest, UpstreamRateLimited
from switchboard.embeddings.factory import build_embedding_engine
from switchboard.engines.base import EngineError, Usage
from switchboard.gateway import requests as rq
from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.handlers import read_body
from switchboard.gateway.responses import JSONBytesResponse
from switchboard.gateway.schemas import MAX_EMBEDDING_INPUTS, EmbeddingsRequest
from switchboard.observability.logs import request_id_var
from switchboard.observability.metrics import Outcome


def engine_api_error(exc: EngineError) -> ApiError:
    """An embedding expert's failure for the client: its 4xx relayed with the field it names, a 429 with the
    upstream's Retry-After, a 5xx naming the expert."""
    if isinstance(exc, UpstreamRateLimited):
        retry_after = str(max(1, math.ceil(exc.retry_after_s))) if exc.retry_after_s is not None else "1"
        return ApiError(429, f"expert '{exc.expert_id}' is rate limited by its upstream: {exc.detail}; retry after {retry_after} s",
                        code=exc.code, headers={"retry-after": retry_after})
    if exc.status < 500:
        return ApiError(exc.status, f"expert '{exc.expert_id}' rejected the request: {exc.detail}", param=getattr(exc, "param", None), code=exc.code)
    return ApiError(exc.status, f"expert '{exc.expert_id}' failed: {exc.detail}", code=exc.code)


def parse_embeddings(raw: bytes) -> tuple[EmbeddingsRequest, dict[str, Any], list[str] | None, list[list[int]] | None]:
    """The validated request, the body as sent, and its inputs as texts or token-id lists. Raises ApiError 400."""
    body = rq.parse_json_object(raw)
    parsed = rq.validate(EmbeddingsRequest, body)
    assert isinstance(parsed, EmbeddingsRequest)
    value = parsed.input
    if isinstance(value, str):
        return parsed, body, [value], None
    if not value:
        raise ApiError(400, "input must hold at least one text or token list", param="input", code="invalid_value")
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise ApiError(400, f"input holds {len(value)} items; at most {MAX_EMBEDDING_INPUTS} are allowed", param="input", code="invalid_value")
    if isinstance(value[0], str):
        return parsed, body, list(value), None  # type: ignore[arg-type]
    if isinstance(value[0], int):
        return parsed, body, None, [list(value)]  # type: ignore[arg-type]
    if any(not ids for ids in value):  # type: ignore[union-attr]
        raise ApiError(400, "input holds an empty token list", param="input", code="invalid_value")
    return parsed, body, None, [list(ids) for ids in value]  # type: ignore[union-attr]


class EmbeddingsEndpoint:
    """The endpoint and its engines, one per embedding expert: each starts on its first request, all stop with
    the app's lifespan."""

    def __init__(self, config: SwitchboardConfig, request_log: Any, gate: Any, metrics: Any, is_draining: Callable[[], bool],
                 environ: Mapping[str, str] | None = None, engines: Mapping[str, EmbeddingEngine] | None = None) -> None:
        self.config = config
        self.request_log = request_log
        self.gate = gate
        self.metrics = metrics
        self.is_draining = is_draining
        self.timeout_s = config.gateway.request_timeout_s
        self.max_body_bytes = config.gateway.max_body_bytes
        self.engines: dict[str, EmbeddingEngine] = dict(engines) if engines is not None else {
            e.id: build_embedding_engine(e, environ) for e in config.embedding_experts}

    async def stop(self) -> None:
        """Stops every engine. Engines start on their first request: a local model loads then, not with the
        app (every gateway a test suite builds would load it otherwise)."""
        for engine in self.engines.values():
            await engine.stop()

    async def post(self, request: Request) -> Response:
        started_at = time.perf_counter()
        request_id = "embd-" + os.urandom(16).hex()
        try:
            if self.is_draining():
                raise ApiError(503, "the gateway is shutting down; retry on another instance", code="gateway_shutting_down", headers={"retry-after": "1"})
            parsed, body, texts, token_ids = parse_embeddings(await read_body(request, self.max_body_bytes))
            expert = self.config.embedding_expert(parsed.model)
            if expert is None:
                raise self._unknown_model(parsed.model)
            engine = self.engines[expert.id]
            call = EmbeddingRequest(request_id, body, texts, token_ids)
            try:
                async with asyncio.timeout(self.timeout_s):
                    await engine.start()  # a local model's first request waits for its load (or export)
            except TimeoutError:
                raise ApiError(504, f"expert '{expert.id}' did not get ready within {self.timeout_s:.0f} s", code="expert_timeout") from None
            # Tokenizing thousands of inputs takes milliseconds: off the event loop then (the tokenizer releases the GIL).
            num_tokens = engine.count_tokens(call) if call.num_inputs <= 16 else await asyncio.to_thread(engine.count_tokens, call)
            await self.gate.admit(num_tokens)
        except ApiError as exc:
            self.metrics.invalid(started_at, exc.status)
            return error_response(exc)
        except EngineError as exc:
            error = engine_api_error(exc)
            self.metrics.invalid(started_at, error.status)
            return error_response(error)
        request_id_var.set(request_id)
        headers = {"x-request-id": request_id, "x-switchboard-expert": expert.id}
        entry = self.request_log.begin(request_id, "embedding", expert.id, None, None)
        outcome, status, usage, error = Outcome.ERROR, 500, None, None
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    answer = await engine.embed(call)
                outcome, status, usage = Outcome.OK, 200, Usage(answer.num_prompt_tokens, 0)
            except EngineError as exc:
                error = engine_api_error(exc)
                outcome, status = (Outcome.REJECTED if exc.status == 429 else Outcome.INVALID if exc.status < 500 else Outcome.ERROR), error.status
            except TimeoutError:
                error = ApiError(504, f"expert '{expert.id}' did not answer within {self.timeout_s:.0f} s", code="expert_timeout")
                outcome, status = Outcome.TIMEOUT, 504
            except asyncio.CancelledError:
                outcome, status = Outcome.CANCELLED, 499
                raise
        finally:
            self.metrics.finish(expert.id, outcome, started_at, usage=usage, request_id=request_id, status=status)
            self.request_log.finish(entry, outcome, status, started_at, usage=usage)
        if error is not None:
            return error_response(error, headers)
        answer.body["model"] = expert.id
        return JSONBytesResponse(orjson.dumps(answer.body, option=orjson.OPT_SERIALIZE_NUMPY), headers)

    def _unknown_model(self, model: str) -> ApiError:
        known = ", ".join(e.id for e in self.config.embedding_experts) or "none are configured"
        if self.config.expert(model) is not None or model == "auto":
            return ApiError(404, f"the model '{model}' is not an embedding model; embedding models: {known}", param="model", code="model_not_found")
        return ApiError(404, f"the model '{model}' does not exist; embedding models: {known}", param="model", code="model_not_found")

