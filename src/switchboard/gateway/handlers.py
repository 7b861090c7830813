"""The API's request handlers: validate, choose an expert, lease a replica, answer whole or streamed."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.config.schema import ExpertConfig
from switchboard.engines.base import EngineError, Finish, GenerationRequest, RequestKind, StreamEvent, TextDelta
from switchboard.gateway import requests as rq
from switchboard.gateway.choosing import ChoiceError, ExpertChoice
from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.responses import ChunkWriter, JSONBytesResponse, SSEResponse, completion_body
from switchboard.gateway.state import GatewayState
from switchboard.observability.logs import request_id_var
from switchboard.observability.metrics import Outcome
from switchboard.runtime.fleet import AdmissionRejected
from switchboard.storage.writer import DisabledRequestLog
from switchboard.types import AUTO_MODEL

JSON = "application/json"


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refusing (413) anything over `max_bytes` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise ApiError(413, f"request body of {declared} bytes is over the limit of {max_bytes} bytes", code="body_too_large")
        except ValueError:
            raise ApiError(400, "invalid content-length header", code="invalid_header") from None
    # Straight from the ASGI channel rather than Request.stream(): a body is almost always one message, and
    # this is on every request's path.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "the client disconnected while sending the body", code="client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body is over the limit of {max_bytes} bytes", code="body_too_large")
        if not message.get("more_body", False):
            return b"".join(chunks) + chunk if chunks else chunk
        chunks.append(chunk)


def _rejection_api_error(exc: AdmissionRejected) -> ApiError:
    retry_after = str(max(1, round(exc.retry_after_s)))
    kind = "is overloaded" if exc.status == 429 else "cannot serve in time"
    return ApiError(exc.status, f"expert '{exc.expert_id}' {kind}: {exc.reason}; retry after {retry_after} s",
                    code="expert_overloaded" if exc.status == 429 else "expert_unavailable", headers={"retry-after": retry_after})


def _prefix_key(parsed: Any) -> str:
    """The conversation's opening (system prompt and first user turn): the same key keeps a conversation on
    the replica that already holds its prefix."""
    opening = [m.content for m in parsed.messages[:2] if isinstance(m.content, str)]
    return str(hash(tuple(c[:512] for c in opening))) if opening else ""


def _engine_api_error(exc: EngineError) -> ApiError:
    if exc.status < 500:
        return ApiError(exc.status, f"expert '{exc.expert_id}' rejected the request: {exc.detail}", code=exc.code)
    return ApiError(exc.status, f"expert '{exc.expert_id}' failed: {exc.detail}", code=exc.code)


class Handlers:
    def __init__(self, state: GatewayState, request_log: Any = None) -> None:
        self.state = state
        # request log (storage/writer.py): one `finish` call next to each metrics `finish`, a queue append
        self.request_log = request_log if request_log is not None else DisabledRequestLog()
        self.max_body_bytes = state.config.gateway.max_body_bytes
        self.timeout_s = state.config.gateway.request_timeout_s
        self.metrics = state.observability.requests  # metrics: one `finish` call at each request's end

    async def chat_completions(self, request: Request) -> Response:
        started_at = time.perf_counter()
        try:
            raw = await read_body(request, self.max_body_bytes)
            parsed, body = rq.parse_chat(raw)
            text = rq.chat_prompt_text(parsed)
            num_prompt = rq.estimate_tokens(text, len(parsed.messages))
            user_text = rq.last_user_text(parsed)
            asked = parsed.max_completion_tokens or parsed.max_tokens
            expert, choice = await self._resolve(parsed.model, parsed.routing, user_text if parsed.model == AUTO_MODEL else "")
            if rq.has_non_text_content(parsed) and expert.backend.kind != "openai":
                raise ApiError(400, f"expert '{expert.id}' accepts text content only", param="messages", code="unsupported_content")
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            return await self._generate("chat", body, expert, choice, num_prompt, asked, bool(parsed.stream), include_usage, _prefix_key(parsed), started_at,
                                        user_text)
        except ApiError as exc:
            self.metrics.invalid(started_at, exc.status)
            return error_response(exc)

    async def completions(self, request: Request) -> Response:
        started_at = time.perf_counter()
        try:
            raw = await read_body(request, self.max_body_bytes)
            parsed, body = rq.parse_completion(raw)
            text = parsed.prompt if isinstance(parsed.prompt, str) else parsed.prompt[0]
            num_prompt = rq.estimate_tokens(text)
            expert, choice = await self._resolve(parsed.model, parsed.routing, text if parsed.model == AUTO_MODEL else "")
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            return await self._generate("completion", body, expert, choice, num_prompt, parsed.max_tokens, bool(parsed.stream), include_usage, "", started_at,
                                        text)
        except ApiError as exc:
            self.metrics.invalid(started_at, exc.status)
            return error_response(exc)

    async def _resolve(self, model: str, routing: Any, route_text: str) -> tuple[ExpertConfig, ExpertChoice | None]:
        state = self.state
        if model != AUTO_MODEL:
            expert = state.fleet.expert(model)
            if expert is None:
                raise ApiError(404, f"the model '{model}' does not exist; see GET /v1/models", param="model", code="model_not_found")
            return expert, None
        unknown = [e for e in (routing.experts or []) if state.fleet.expert(e) is None] if routing else []
        if unknown:
            raise ApiError(400, f"routing.experts names unknown experts: {', '.join(unknown)}", param="routing.experts", code="model_not_found")
        chooser = state.chooser
        try:
            if chooser.blocking:
                choice = await asyncio.to_thread(chooser.choose, route_text, routing, state.config.experts)
            else:
                choice = chooser.choose(route_text, routing, state.config.experts)
        except ChoiceError as exc:
            raise ApiError(400, str(exc), param="routing", code="no_expert_satisfies_routing") from None
        routed = state.fleet.route(choice)  # the Ray fleet asks its control actor: awaitable there
        expert_id, fleet_info = (await routed) if inspect.isawaitable(routed) else routed
        if fleet_info:
            choice = dataclasses.replace(choice, expert_id=expert_id, route_info={**(choice.route_info or {}), **fleet_info})
        expert = state.fleet.expert(expert_id)
        assert expert is not None, "choosers only choose among the candidates they are given"
        return expert, choice

    async def _generate(
        self,
        kind: RequestKind,
        body: dict[str, Any],
        expert: ExpertConfig,
        choice: ExpertChoice | None,
        num_prompt: int,
        asked_max_tokens: int | None,
        stream: bool,
        include_usage: bool,
        prefix_key: str,
        started_at: float,
        prompt_text: str | None = None,
    ) -> Response:
        max_tokens = self._max_tokens(kind, expert, num_prompt, asked_max_tokens)
        request_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + os.urandom(16).hex()  # uuid4's entropy, cheaper
        request_id_var.set(request_id)  # logs: every line logged while serving this request carries its id
        gen = GenerationRequest(request_id, kind, body, max_tokens, num_prompt)
        headers = {"x-switchboard-expert": expert.id, "x-request-id": request_id}
        if choice is not None:
            # Header values are latin-1: escape anything else (reasons may hold arrows, names may hold anything).
            headers["x-switchboard-route"] = json.dumps({"reason": choice.reason, **(choice.route_info or {})}, ensure_ascii=True, separators=(",", ":"))
            self.metrics.routed(expert.id, choice)  # metrics: where `auto` sent it, and why
        lease = self.state.fleet.lease(expert.id, request_id, num_prompt, max_tokens, prefix_key)
        entry = self.request_log.begin(request_id, kind, expert.id, headers.get("x-switchboard-route"), prompt_text)
        created = int(time.time())
        if not stream:
            outcome, status, usage = Outcome.ERROR, 500, None  # metrics: set on every way out, recorded in `finally`
            try:
                async with asyncio.timeout(self.timeout_s):
                    async with lease:
                        headers["x-switchboard-replica"] = lease.replica.replica_id  # type: ignore[union-attr]
                        headers["x-switchboard-cold-start"] = "true" if lease.was_cold else "false"
                        completion = await lease.complete(gen)
                        headers["x-switchboard-replica"] = lease.replica.replica_id  # type: ignore[union-attr]  # the one that answered, after a retry
                outcome, status, usage = Outcome.OK, 200, completion.finish.usage
            except EngineError as exc:
                outcome, status = (Outcome.INVALID if exc.status < 500 else Outcome.ERROR), exc.status
                return error_response(_engine_api_error(exc), headers)
            except AdmissionRejected as exc:
                outcome, status = Outcome.REJECTED, exc.status
                return error_response(_rejection_api_error(exc), headers)
            except TimeoutError:
                outcome, status = Outcome.TIMEOUT, 504
                return error_response(ApiError(504, f"expert '{expert.id}' did not answer within {self.timeout_s:.0f} s", code="expert_timeout"), headers)
            except asyncio.CancelledError:
                outcome, status = Outcome.CANCELLED, 499
                raise
            finally:
                self.metrics.finish(expert.id, outcome, started_at, usage=usage, request_id=request_id, status=status,
                                    replica_id=headers.get("x-switchboard-replica", ""), was_cold=lease.was_cold)
                self.request_log.finish(entry, outcome, status, started_at, lease=lease, usage=usage)
            return JSONBytesResponse(completion_body(kind, request_id, created, expert.id, completion), headers)
        return await self._stream(gen, lease, expert, headers, created, include_usage, started_at, entry)

    def _max_tokens(self, kind: RequestKind, expert: ExpertConfig, num_prompt: int, asked: int | None) -> int:
        if asked is not None and asked > expert.max_output_tokens:
            raise ApiError(400, f"max_tokens is {asked}, over expert '{expert.id}''s limit of {expert.max_output_tokens}", param="max_tokens", code="invalid_value")
        room = expert.context_tokens - num_prompt
        if room < 1 or (asked is not None and asked > room):
            raise ApiError(
                400,
                f"expert '{expert.id}' has a context of {expert.context_tokens} tokens; the prompt is about {num_prompt} tokens"
                + (f" and max_tokens asks for {asked}" if asked is not None else ""),
                param=(("messages" if kind == "chat" else "prompt") if asked is None or room < 1 else "max_tokens"),
                code="context_length_exceeded",
            )
        if asked is not None:
            return asked
        return max(1, min(self.state.config.defaults.max_tokens, expert.max_output_tokens, room))

    async def _stream(self, gen: GenerationRequest, lease: Any, expert: ExpertConfig, headers: dict[str, str], created: int, include_usage: bool,
                      started_at: float, entry: Any = None) -> Response:
        writer = ChunkWriter(gen.kind, gen.request_id, created, expert.id, include_usage)
        # Everything up to the first event happens before the status line, so a failure there is a proper
        # HTTP error (and, later, a fallback to another expert) rather than a broken stream.
        try:
            async with asyncio.timeout(self.timeout_s):
                await lease.__aenter__()
                events = lease.stream(gen)
                first = await anext(events)
                first_token_at = time.perf_counter()
        except EngineError as exc:
            await lease.__aexit__(type(exc), exc, None)
            self.metrics.finish(expert.id, Outcome.INVALID if exc.status < 500 else Outcome.ERROR, started_at, request_id=gen.request_id, status=exc.status)
            self.request_log.finish(entry, Outcome.INVALID if exc.status < 500 else Outcome.ERROR, exc.status, started_at, lease=lease)
            return error_response(_engine_api_error(exc), headers)
        except AdmissionRejected as exc:
            self.metrics.finish(expert.id, Outcome.REJECTED, started_at, request_id=gen.request_id, status=exc.status)
            self.request_log.finish(entry, Outcome.REJECTED, exc.status, started_at, lease=lease)
            return error_response(_rejection_api_error(exc), headers)
        except TimeoutError:
            exc = ApiError(504, f"expert '{expert.id}' sent no token within {self.timeout_s:.0f} s", code="expert_timeout")
            await lease.__aexit__(TimeoutError, None, None)
            self.metrics.finish(expert.id, Outcome.TIMEOUT, started_at, request_id=gen.request_id, status=504)
            self.request_log.finish(entry, Outcome.TIMEOUT, 504, started_at, lease=lease)
            return error_response(exc, headers)
        except BaseException as exc:  # cancelled while waiting: give the replica its load back
            await lease.__aexit__(type(exc), exc, None)
            self.metrics.finish(expert.id, Outcome.CANCELLED, started_at, request_id=gen.request_id, status=499)
            self.request_log.finish(entry, Outcome.CANCELLED, 499, started_at, lease=lease)
            raise
        headers["x-switchboard-replica"] = lease.replica.replica_id
        headers["x-switchboard-cold-start"] = "true" if lease.was_cold else "false"
        headers["cache-control"] = "no-cache"
        timing = (started_at, first_token_at)
        return SSEResponse(self._sse(writer, first, events, lease, expert, timing, entry), headers)

    async def _sse(self, writer: ChunkWriter, first: StreamEvent, events: AsyncIterator[StreamEvent], lease: Any, expert: ExpertConfig,
                   timing: tuple[float, float], entry: Any = None) -> AsyncIterator[bytes]:
        failure: BaseException | None = None
        usage = None  # metrics
        try:
            if writer.kind == "chat":
                yield writer.role()
            event = first
            while True:
                if isinstance(event, Finish):
                    usage = event.usage
                    yield writer.finish(event)
                    return
                assert isinstance(event, TextDelta)
                yield writer.text(event.text, event.raw_delta)
                event = await anext(events)
        except EngineError as exc:
            failure = exc
            yield ChunkWriter.error(exc.status, f"expert '{expert.id}' failed mid-stream: {exc.detail}", exc.code)
        except StopAsyncIteration as exc:
            failure = exc
            yield ChunkWriter.error(502, f"expert '{expert.id}' ended its stream without finishing", "bad_upstream_response")
        except BaseException as exc:  # client went away (cancellation): record, then let it propagate
            failure = exc
            raise
        finally:
            await events.aclose()
            await lease.__aexit__(type(failure) if failure else None, failure, None)
            # metrics: the stream's one record, with its first-token time
            outcome = Outcome.OK if failure is None else Outcome.ERROR if isinstance(failure, (EngineError, StopAsyncIteration)) else Outcome.CANCELLED
            self.metrics.finish(expert.id, outcome, timing[0], first_token_at=timing[1], usage=usage, request_id=writer.head["id"],
                                replica_id=lease.replica.replica_id, status=200, was_cold=lease.was_cold)
            self.request_log.finish(entry, outcome, 200, timing[0], lease=lease, first_token_at=timing[1], usage=usage)

    async def models(self, request: Request) -> Response:
        created = self.state.started_at
        data = [{"id": AUTO_MODEL, "object": "model", "created": created, "owned_by": "switchboard"}]
        data += [{"id": e.id, "object": "model", "created": created, "owned_by": "switchboard"} for e in self.state.config.experts]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    async def admin_fleet(self, request: Request) -> Response:
        return Response(orjson.dumps(self.state.fleet.snapshot()), media_type=JSON)
