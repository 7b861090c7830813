"""The API's request handlers: validate, choose an expert, lease a replica (failing over to others as
gateway/failover.py says), answer whole or streamed; drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from switchboard.config.schema import ExpertConfig
from switchboard.engines.base import EngineError, EngineRateLimited, Finish, RawChunk, RequestKind, StreamEvent
from switchboard.engines.llamacpp.tokens import PromptTokens
from switchboard.gateway import requests as rq
from switchboard.gateway.affinity import chat_prefix_key
from switchboard.gateway.auth import OpenGate
from switchboard.gateway.capabilities import relays_everything, takes_token_prompts, unsupported
from switchboard.gateway.choosing import ChoiceError, ExpertChoice
from switchboard.gateway.deadline import StreamDeadline
from switchboard.gateway.errors import ApiError, error_response, model_not_found
from switchboard.gateway.failover import AttemptsFailed, FailedAttempt, FailoverRun, LeaseAttempts, NextAttempt
from switchboard.gateway.responses import SSE_DONE, ChunkWriter, ClientWatch, JSONBytesResponse, SSEResponse, completion_body
from switchboard.gateway.state import GatewayState
from switchboard.observability.logs import request_id_var
from switchboard.observability.metrics import Outcome
from switchboard.runtime.lease import AdmissionRejected
from switchboard.storage.writer import DisabledRequestLog
from switchboard.types import AUTO_MODEL

JSON = "application/json"
log = logging.getLogger("switchboard.gateway")


def _shutting_down() -> ApiError:
    return ApiError(503, "the gateway is shutting down; retry on another instance", code="gateway_shutting_down", headers={"retry-after": "1"})


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


def _able(experts: Any, routing: Any, cannot_serve: Any) -> list[ExpertConfig]:
    """The experts `auto` may choose for a request: those that can serve it (tools, non-text content, logprobs,
    its length...). When none of those the request's `routing.experts` allows can: the 400 saying why."""
    refusals = {e.id: cannot_serve(e) for e in experts}
    allowed = [e.id for e in experts if routing is None or routing.experts is None or e.id in routing.experts]
    if allowed and all(refusals[i] is not None for i in allowed):
        first = refusals[allowed[0]]
        shown = "; ".join(refusals[i].message for i in allowed[:3]) + ("; ..." if len(allowed) > 3 else "")
        raise ApiError(400, f"no expert that 'auto' may choose can serve this request: {shown}", param=first.param, code=first.code)
    return [e for e in experts if refusals[e.id] is None]


def _tried(run: FailoverRun[Any]) -> str:
    if not run.failures:
        return ""
    return " (after failed attempts: " + ", ".join(f"{f.expert_id} {f.code}" for f in run.failures) + ")"


def _failed_outcome(exc: BaseException) -> tuple[Outcome, int]:
    if isinstance(exc, AdmissionRejected):
        return Outcome.REJECTED, exc.status
    if isinstance(exc, EngineRateLimited):
        return Outcome.REJECTED, exc.status
    if isinstance(exc, EngineError):
        return (Outcome.INVALID if exc.status < 500 else Outcome.ERROR), exc.status
    return Outcome.ERROR, 502  # a stream that ended before its first event


def _failure_api_error(failed: AttemptsFailed, run: FailoverRun[Any]) -> ApiError:
    """The last attempt's error for the client, naming the expert and, after failover, what was tried."""
    exc = failed.last
    if isinstance(exc, AdmissionRejected):
        error = _rejection_api_error(exc)
    elif isinstance(exc, EngineError):
        error = _engine_api_error(exc)
    else:
        error = ApiError(502, f"expert '{run.expert_id}' ended its stream before sending anything", code="bad_upstream_response")
    if len(run.failures) > 1:
        error.message += f"; {len(run.failures)} attempts failed ({', '.join(f'{f.expert_id}: {f.code}' for f in run.failures)}), {failed.why}"
    return error


def _engine_api_error(exc: EngineError) -> ApiError:
    if isinstance(exc, EngineRateLimited):
        # The upstream's own Retry-After, so a client (the openai SDK) waits exactly as long as it asked.
        retry_after = str(max(1, math.ceil(exc.retry_after_s))) if exc.retry_after_s is not None else "1"
        return ApiError(429, f"expert '{exc.expert_id}' is rate limited by its upstream: {exc.detail}; retry after {retry_after} s",
                        code=exc.code, headers={"retry-after": retry_after})
    if exc.status < 500:
        return ApiError(exc.status, f"expert '{exc.expert_id}' rejected the request: {exc.detail}", code=exc.code)
    return ApiError(exc.status, f"expert '{exc.expert_id}' failed: {exc.detail}", code=exc.code)


class Handlers:
    def __init__(self, state: GatewayState, request_log: Any = None, gate: Any = None) -> None:
        self.state = state
        self.gate = gate or OpenGate()  # API keys (gateway/auth.py): limits and key policies where the expert is chosen
        # request log (storage/writer.py): one `finish` call next to each metrics `finish`, a queue append
        self.request_log = request_log if request_log is not None else DisabledRequestLog()
        self.max_body_bytes = state.config.gateway.max_body_bytes
        self.timeout_s = state.config.gateway.request_timeout_s
        self.prefix_secret = state.config.gateway.prefix_key_secret.encode()
        self.metrics = state.observability.requests  # metrics: one `finish` call at each request's end
        self.failover = state.config.failover
        self.rng = random.Random(self.failover.seed)  # backoff jitter
        # Graceful shutdown: after `begin_drain`, new requests get 503 and every in-flight request's deadline
        # becomes at most `drain_at` (loop time), so each ends with an answer or an explicit error in time.
        self.drain_at = math.inf
        self._deadlines: set[asyncio.Timeout | StreamDeadline] = set()
        self.prompt_tokens = PromptTokens()  # llama.cpp experts' exact prompt counts (engines/llamacpp/tokens.py)
        self.stored_chats: Any = None  # `store: true` chat answers are kept here (gateway/stored_chats), when the app sets it

    def begin_drain(self, timeout_s: float) -> None:
        """Stops taking requests; in-flight ones get `timeout_s` more. Call on the event loop's thread."""
        if self.is_draining:
            return
        self.drain_at = asyncio.get_running_loop().time() + timeout_s
        for scope in list(self._deadlines):
            when = scope.when()
            if when is None or when > self.drain_at:
                with contextlib.suppress(RuntimeError):  # already expiring: that request is ending anyway
                    scope.reschedule(self.drain_at)

    @property
    def is_draining(self) -> bool:
        return self.drain_at != math.inf

    def _deadline(self, deadline_at: float) -> asyncio.Timeout:
        return asyncio.timeout_at(min(deadline_at, self.drain_at))

    def _timed_out(self, run: FailoverRun[Any], what: str) -> ApiError:
        if asyncio.get_running_loop().time() >= self.drain_at:
            return ApiError(503, f"the gateway is shutting down; expert '{run.expert_id}' {what} within the drain timeout", code="gateway_shutting_down",
                            headers={"retry-after": "1"})
        return ApiError(504, f"expert '{run.expert_id}' {what} within {self.timeout_s:.0f} s{_tried(run)}", code="expert_timeout")

    async def chat_completions(self, request: Request) -> Response:
        started_at = time.perf_counter()
        try:
            if self.is_draining:
                raise _shutting_down()
            raw = await read_body(request, self.max_body_bytes)
            parsed, body = rq.parse_chat(raw)
            text = rq.chat_prompt_text(parsed)
            num_prompt = await self._prompt_tokens("chat", body, parsed.model, rq.estimate_tokens(text, len(parsed.messages)))
            user_text = rq.last_user_text(parsed)
            asked = parsed.max_completion_tokens or parsed.max_tokens
            text_only = not rq.has_non_text_content(parsed)
            cannot_serve = functools.partial(self._cannot_serve, "chat", body, text_only)
            expert, choice = await self.gate.resolve(parsed.model, parsed.routing, num_prompt, asked, rq.routing_text(parsed),
                                                     functools.partial(self._resolve, num_prompt_tokens=num_prompt,
                                                                       cannot_serve=functools.partial(cannot_serve, num_prompt, asked)))
            if expert.id != parsed.model:  # chosen by the router: its own count for the context check
                num_prompt = await self.prompt_tokens.count("chat", body, expert, num_prompt)
            if (cannot := cannot_serve(None, None, expert)) is not None:
                raise cannot
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            kept = self.stored_chats if parsed.store else None
            tap = kept.tap() if kept is not None else None
            response = await self._generate("chat", body, expert, choice, num_prompt, asked, bool(parsed.stream), include_usage,
                                            chat_prefix_key(parsed, self.prefix_secret), started_at, user_text, text_only=text_only, tap=tap,
                                            receive=request.receive)
            return await kept.keep(response, body, tap) if kept is not None else response
        except ApiError as exc:
            self.metrics.invalid(started_at, exc.status)
            return error_response(exc)

    async def completions(self, request: Request) -> Response:
        started_at = time.perf_counter()
        try:
            if self.is_draining:
                raise _shutting_down()
            raw = await read_body(request, self.max_body_bytes)
            parsed, body = rq.parse_completion(raw)
            tokens = rq.token_prompts(parsed.prompt)
            if tokens is not None:
                # Token ids mean something only to the model they were made for: relayed to a named expert's
                # server as sent (which counts them exactly), never routed.
                if parsed.model == AUTO_MODEL:
                    raise ApiError(400, "model 'auto' routes by the prompt's text: send text, or name the expert the token ids are for",
                                   param="prompt", code="unsupported_value")
                text, num_prompt = "", max(len(t) for t in tokens)
            else:
                # Several prompts: routed (and logged) by the first; limits and admission by the longest, since each
                # is generated alone (gateway/choices.py) and the answer's usage settles the sum.
                text = parsed.prompt if isinstance(parsed.prompt, str) else parsed.prompt[0]
                longest = text if isinstance(parsed.prompt, str) else max(parsed.prompt, key=len)
                num_prompt = await self._prompt_tokens("completion", body, parsed.model, rq.estimate_tokens(longest))
            cannot_serve = functools.partial(self._cannot_serve, "completion", body, tokens is None)
            expert, choice = await self.gate.resolve(parsed.model, parsed.routing, num_prompt, parsed.max_tokens, text,
                                                     functools.partial(self._resolve, num_prompt_tokens=num_prompt,
                                                                       cannot_serve=functools.partial(cannot_serve, num_prompt, parsed.max_tokens)))
            if expert.id != parsed.model:
                num_prompt = await self.prompt_tokens.count("completion", body, expert, num_prompt)
            if (cannot := cannot_serve(None, None, expert)) is not None:
                raise cannot
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            return await self._generate("completion", body, expert, choice, num_prompt, parsed.max_tokens, bool(parsed.stream), include_usage, "", started_at,
                                        text, text_only=tokens is None, receive=request.receive)
        except ApiError as exc:
            self.metrics.invalid(started_at, exc.status)
            return error_response(exc)

    async def _prompt_tokens(self, kind: RequestKind, body: dict[str, Any], model: str, estimate: int) -> int:
        """The prompt's tokens as the named expert counts them (llama.cpp experts: exactly, with the GGUF's own
        template and vocabulary), else `estimate`. What context-length checks and per-key token limits use."""
        return await self.prompt_tokens.count(kind, body, self.state.fleet.expert(model) if model != AUTO_MODEL else None, estimate)

    def _cannot_serve(self, kind: RequestKind, body: dict[str, Any], text_only: bool, num_prompt: int | None, asked: int | None,
                      expert: ExpertConfig) -> ApiError | None:
        """The 400 `expert` would answer this request with, or None if it can serve it: non-text content (a chat's
        images..., a completion's token ids) on an expert that only takes text, a field its engine cannot honour, and (with `num_prompt`) a prompt and
        max_tokens over its context or output limit."""
        if kind == "completion" and not text_only and not takes_token_prompts(expert):
            return ApiError(400, f"expert '{expert.id}' takes text prompts only: token ids need an expert that relays to its server "
                                 "or a llama.cpp expert", param="prompt", code="unsupported_value")
        if kind == "chat" and not text_only and not relays_everything(expert):
            return ApiError(400, f"expert '{expert.id}' accepts text content only", param="messages", code="unsupported_content")
        if (cannot := unsupported(kind, expert, body)) is not None:
            return cannot
        if num_prompt is not None:
            try:
                self._max_tokens(kind, expert, num_prompt, asked)
            except ApiError as exc:
                return exc
        return None

    async def _resolve(self, model: str, routing: Any, route_text: str, num_prompt_tokens: int | None = None,
                       cannot_serve: Any = None) -> tuple[ExpertConfig, ExpertChoice | None]:
        """The expert for `model` (`auto`: the router's choice, re-scored against the fleet, which judges a wake
        for this request by its `num_prompt_tokens`, among the experts that can serve the request:
        `cannot_serve(expert)` is None for them, and the 400 it would answer otherwise)."""
        state = self.state
        if model != AUTO_MODEL:
            expert = state.fleet.expert(model)
            if expert is None:
                raise model_not_found(model)
            return expert, None
        unknown = [e for e in (routing.experts or []) if state.fleet.expert(e) is None] if routing else []
        if unknown:
            raise ApiError(400, f"routing.experts names unknown experts: {', '.join(unknown)}", param="routing.experts", code="model_not_found")
        candidates = state.config.experts
        if cannot_serve is not None:
            candidates = _able(candidates, routing, cannot_serve)
        chooser = state.chooser
        try:
            if chooser.blocking:
                choice = await asyncio.to_thread(chooser.choose, route_text, routing, candidates)
            else:
                choice = chooser.choose(route_text, routing, candidates)
        except ChoiceError as exc:
            raise ApiError(400, str(exc), param="routing", code="no_expert_satisfies_routing") from None
        if num_prompt_tokens is not None:
            choice = dataclasses.replace(choice, num_prompt_tokens=num_prompt_tokens)
        routed = state.fleet.route(choice)  # the Ray fleet asks its control actor: awaitable there
        expert_id, fleet_info = (await routed) if inspect.isawaitable(routed) else routed
        if fleet_info:
            # The router's own pick stays first in line should the fleet's choice fail.
            fallbacks = tuple(e for e in (choice.expert_id, *choice.fallbacks) if e != expert_id)
            choice = dataclasses.replace(choice, expert_id=expert_id, fallbacks=fallbacks, route_info={**(choice.route_info or {}), **fleet_info})
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
        text_only: bool = True,
        tap: Any = None,
        receive: Any = None,
    ) -> Response:
        """Answers on `expert`, failing over as `gateway/failover.py` says. `text_only` False means the request
        carries non-text content: a chat's images..., which only experts relaying to a server take (so only they are
        fallbacks for it); a completion's token ids, which mean something to one model only (so no other expert is).
        `tap` (a stream's): its `usage` is set to the answer's usage before the stream's last chunk, asked for or not.
        `receive` (the request's ASGI channel, its body read): a whole answer is abandoned, its engine call cancelled,
        when the client leaves before it is ready."""
        # The chosen expert's limits are the client's to respect (a 400); a fallback that cannot take this
        # request is simply no fallback for it.
        max_tokens = {expert.id: self._max_tokens(kind, expert, num_prompt, asked_max_tokens)}
        for fallback_id in (choice.fallbacks if choice is not None else expert.fallbacks):
            fallback = self.state.fleet.expert(fallback_id)
            if fallback is None or fallback_id in max_tokens or (not text_only and not relays_everything(fallback)):
                continue
            if kind == "completion" and not text_only:  # token ids are one vocabulary's: no other expert's (its replicas may still serve)
                continue
            if unsupported(kind, fallback, body) is not None:  # it cannot honour some field: no fallback for this request
                continue
            try:
                max_tokens[fallback_id] = self._max_tokens(kind, fallback, num_prompt, asked_max_tokens)
            except ApiError:
                continue
        request_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + os.urandom(16).hex()  # uuid4's entropy, cheaper
        request_id_var.set(request_id)  # logs: every line logged while serving this request carries its id
        headers = {"x-switchboard-expert": expert.id, "x-request-id": request_id}
        if choice is not None:
            # Header values are latin-1: escape anything else (reasons may hold arrows, names may hold anything).
            headers["x-switchboard-route"] = json.dumps({"reason": choice.reason, **(choice.route_info or {})}, ensure_ascii=True, separators=(",", ":"))
            self.metrics.routed(expert.id, choice)  # metrics: where `auto` sent it, and why
        entry = self.request_log.begin(request_id, kind, expert.id, headers.get("x-switchboard-route"), prompt_text)
        attempt = LeaseAttempts(self.state.fleet, request_id, kind, body, num_prompt, max_tokens, prefix_key)
        run: FailoverRun[Any] = FailoverRun(self.failover, self.rng, self.state.fleet.is_available, on_failure=self._attempt_failed)
        deadline_at = asyncio.get_running_loop().time() + self.timeout_s
        created = int(time.time())
        if stream:
            return await self._stream(attempt, run, headers, created, include_usage, started_at, entry, deadline_at, tap)
        outcome, status, usage, error = Outcome.ERROR, 500, None, None  # metrics: set on every way out, recorded in `finally`
        # A whole answer is sent at its end: a client that leaves before (its timeout) would not stop the engine,
        # which would generate the rest for nobody while the requests behind wait (a stream notices by itself).
        watch = ClientWatch(receive) if receive is not None else None
        try:
            try:
                async with self._deadline(deadline_at) as scope:
                    self._deadlines.add(scope)
                    try:
                        completion = await run.first_success(tuple(max_tokens), attempt.whole)
                    finally:
                        self._deadlines.discard(scope)
                        if watch is not None:
                            watch.stop()
                outcome, status, usage = Outcome.OK, 200, completion.finish.usage
            except AttemptsFailed as exc:
                outcome, status, error = *_failed_outcome(exc.last), _failure_api_error(exc, run)
            except TimeoutError:
                error = self._timed_out(run, "did not answer")
                outcome, status = (Outcome.TIMEOUT if error.status == 504 else Outcome.ERROR), error.status
            except asyncio.CancelledError:
                outcome, status = Outcome.CANCELLED, 499
                if watch is None or not watch.client_left:
                    raise
                asyncio.current_task().uncancel()  # ours: the answer is for no one, the rest of the request goes on
        finally:
            self._finish(entry, run, headers, outcome, status, started_at, attempt.lease, usage, is_last_failure_the_answer=error is not None and outcome is not Outcome.TIMEOUT)
        if outcome is Outcome.CANCELLED:
            return Response(status_code=499)  # read by no one
        if error is not None:
            return error_response(error, headers)
        if completion.raw_body is not None:  # a pass-through engine's answer, byte for byte
            return JSONBytesResponse(completion.raw_body, headers, completion.raw_headers)
        return JSONBytesResponse(completion_body(kind, request_id, created, run.expert_id, completion), headers)

    def _attempt_failed(self, failure: FailedAttempt, plan: NextAttempt) -> None:
        self.metrics.attempt_failed(failure.expert_id, failure.code, plan.step)
        log.info("attempt on %s (%s) failed: %s (%s); next: %s %s", failure.expert_id, failure.replica_id or "no replica", failure.code,
                 failure.detail, plan.step, plan.expert_id or plan.reason)

    def _finish(self, entry: Any, run: FailoverRun[Any], headers: dict[str, str], outcome: Outcome, status: int, started_at: float, lease: Any,
                usage: Any = None, first_token_at: float | None = None, *, is_last_failure_the_answer: bool = False) -> None:
        """The request's one metrics record and one log row, naming the expert that answered last and, if
        attempts failed before, which (header `x-switchboard-failover`, the log's routing reason; the list
        includes the last attempt when its failure is the answer)."""
        headers["x-switchboard-expert"] = run.expert_id
        replica = getattr(lease, "replica", None)
        if replica is not None:
            headers["x-switchboard-replica"] = replica.replica_id
            headers["x-switchboard-cold-start"] = "true" if lease.was_cold else "false"
        if len(run.failures) > is_last_failure_the_answer:
            failover = run.describe()
            headers["x-switchboard-failover"] = json.dumps(failover, ensure_ascii=True, separators=(",", ":"))
            if entry is not None:
                entry.expert_id = run.expert_id
                reason = json.loads(entry.routing_reason) if entry.routing_reason else {}
                entry.routing_reason = json.dumps({**reason, "failover": failover}, separators=(",", ":"))
        timing = getattr(usage, "timing", None)
        if timing is not None and outcome is Outcome.OK and replica is not None:
            observe = getattr(self.state.fleet, "observe_timing", None)  # LiveFleet, or RemoteFleet's report to the control actor
            if observe is not None:
                observe(replica.replica_id, timing)
        self.metrics.finish(run.expert_id, outcome, started_at, first_token_at=first_token_at, usage=usage, request_id=headers["x-request-id"],
                            status=status, replica_id=replica.replica_id if replica is not None else "", was_cold=bool(getattr(lease, "was_cold", False)))
        self.request_log.finish(entry, outcome, status, started_at, lease=lease, first_token_at=first_token_at, usage=usage)

    def _max_tokens(self, kind: RequestKind, expert: ExpertConfig, num_prompt: int, asked: int | None) -> int:
        if asked is not None and asked > expert.max_output_tokens:
            raise ApiError(400, f"max_tokens is {asked}, over expert '{expert.id}''s limit of {expert.max_output_tokens}", param="max_tokens", code="invalid_value")
        room = expert.context_tokens - num_prompt
        if room < 1 or (asked is not None and asked > room):
            raise ApiError(
                400,
                f"expert '{expert.id}' has a context of {expert.context_tokens} tokens; the prompt is {'' if expert.backend.kind == 'llamacpp' else 'about '}{num_prompt} tokens"
                + (f" and max_tokens asks for {asked}" if asked is not None else ""),
                param=(("messages" if kind == "chat" else "prompt") if asked is None or room < 1 else "max_tokens"),
                code="context_length_exceeded",
            )
        if asked is not None:
            return asked
        return max(1, min(self.state.config.defaults.max_tokens, expert.max_output_tokens, room))

    async def _stream(self, attempt: LeaseAttempts, run: FailoverRun[Any], headers: dict[str, str], created: int, include_usage: bool,
                      started_at: float, entry: Any, deadline_at: float, tap: Any = None) -> Response:
        # Everything up to the first event happens before the status line, so a failure there fails over
        # invisibly or is a proper HTTP error, never a broken stream.
        error = None
        # One deadline for the whole stream (gateway/deadline.py), pulled in by a drain like every other.
        deadline = StreamDeadline(min(deadline_at, self.drain_at))
        self._deadlines.add(deadline)
        try:
            first, events, lease = await deadline.wait(run.first_success(tuple(attempt.max_tokens), attempt.stream))
            first_token_at = time.perf_counter()
        except AttemptsFailed as exc:
            outcome, status = _failed_outcome(exc.last)
            error = _failure_api_error(exc, run)
        except TimeoutError:
            error = self._timed_out(run, "sent no token")
            outcome, status = (Outcome.TIMEOUT if error.status == 504 else Outcome.ERROR), error.status
        except BaseException:  # cancelled while waiting (the attempt gave its replica its load back)
            self._end_deadline(deadline)
            self._finish(entry, run, headers, Outcome.CANCELLED, 499, started_at, attempt.lease)
            raise
        if error is not None:
            self._end_deadline(deadline)
            self._finish(entry, run, headers, outcome, status, started_at, attempt.lease, is_last_failure_the_answer=outcome is not Outcome.TIMEOUT)
            return error_response(error, headers)
        headers["x-switchboard-expert"] = run.expert_id
        headers["x-switchboard-replica"] = lease.replica.replica_id
        headers["x-switchboard-cold-start"] = "true" if lease.was_cold else "false"
        if run.failures:
            headers["x-switchboard-failover"] = json.dumps(run.describe(), ensure_ascii=True, separators=(",", ":"))
        headers["cache-control"] = "no-cache"
        writer = ChunkWriter(attempt.kind, attempt.request_id, created, run.expert_id, include_usage, attempt.num_choices_on(run.expert_id))
        timing = (started_at, first_token_at)
        raw_headers = first.headers if type(first) is RawChunk else ()
        return SSEResponse(self._sse(writer, first, events, lease, run, timing, deadline, entry, headers, tap), headers, raw_headers)

    def _end_deadline(self, deadline: StreamDeadline) -> None:
        deadline.close()
        self._deadlines.discard(deadline)

    async def _sse(self, writer: ChunkWriter, first: StreamEvent, events: AsyncIterator[StreamEvent], lease: Any, run: FailoverRun[Any],
                   timing: tuple[float, float], deadline: StreamDeadline, entry: Any, headers: dict[str, str], tap: Any = None) -> AsyncIterator[bytes]:
        """The stream after its first event. A failure from here on cannot fail over (tokens are out): it ends
        the stream with an explicit error event (OpenAI's `{"error": ...}` chunk, which the openai client
        raises as an APIError) and no [DONE]."""
        failure: BaseException | None = None
        outcome = Outcome.OK
        usage = None  # metrics
        expert_id = run.expert_id
        is_recorded = False

        def record_answer(finish: Finish) -> None:
            # The request's row is queued *before* the client sees the end of its stream: a client that scores
            # the answer as soon as it has it (POST /v1/feedback) must find the request in the log.
            nonlocal usage, is_recorded
            usage, is_recorded = finish.usage, True
            if tap is not None and usage is not None:
                tap.usage = usage.as_dict()
            self._finish(entry, run, headers, Outcome.OK, 200, timing[0], lease, usage, timing[1])

        try:
            if writer.kind == "chat" and type(first) is not RawChunk:
                yield writer.role()
            event = first
            while True:
                if type(event) is RawChunk:  # a pass-through engine's bytes, already the client's wire format
                    if not event.data.endswith(SSE_DONE):
                        yield event.data
                    else:  # the engine's Finish follows at once (no deadline to watch): take it before the [DONE]
                        try:
                            following = await anext(events)
                        except StopAsyncIteration:
                            yield event.data
                            raise
                        if isinstance(following, Finish) and (following.is_relayed or writer.is_last(following)):
                            record_answer(following)
                        yield event.data
                        event = following
                        continue
                elif isinstance(event, Finish):
                    if event.is_relayed or writer.is_last(event):
                        if not is_recorded:
                            record_answer(event)
                        if not event.is_relayed:
                            yield writer.finish(event)
                        return
                    yield writer.finish(event)  # one choice of several ends (n > 1); the next follows
                else:
                    yield writer.text(event.text, event.raw_delta, event.index, event.logprobs)
                # The request's deadline (a trickling upstream must not hold a stream forever), or the drain's.
                event = await deadline.wait(anext(events))
        except EngineError as exc:
            failure, outcome = exc, Outcome.ERROR
            yield ChunkWriter.error(exc.status, f"expert '{expert_id}' failed mid-stream: {exc.detail}", exc.code)
        except StopAsyncIteration as exc:
            failure, outcome = exc, Outcome.ERROR
            yield ChunkWriter.error(502, f"expert '{expert_id}' ended its stream without finishing", "bad_upstream_response")
        except TimeoutError as exc:
            error = self._timed_out(run, "did not finish its stream")
            failure, outcome = exc, (Outcome.TIMEOUT if error.status == 504 else Outcome.ERROR)
            yield ChunkWriter.error(error.status, error.message, error.code or "expert_timeout")
        except BaseException as exc:  # client went away (cancellation): record, then let it propagate
            failure, outcome = exc, Outcome.CANCELLED
            raise
        finally:
            self._end_deadline(deadline)
            await events.aclose()
            await lease.__aexit__(type(failure) if failure else None, failure, None)
            if not is_recorded:  # metrics and the log: the stream's one record, with its first-token time
                self._finish(entry, run, headers, outcome, 200, timing[0], lease, usage, timing[1])

    def _model_objects(self) -> list[dict[str, Any]]:
        created = self.state.started_at
        config = self.state.config
        ids = [AUTO_MODEL, *(e.id for e in (*config.experts, *config.embedding_experts))]
        return [{"id": i, "object": "model", "created": created, "owned_by": "switchboard"} for i in ids]

    async def models(self, request: Request) -> Response:
        return Response(orjson.dumps({"object": "list", "data": self._model_objects()}), media_type=JSON)

    async def model(self, request: Request) -> Response:
        """GET /v1/models/{model}: one model object (the official clients' `models.retrieve`), or OpenAI's 404."""
        wanted = request.path_params["model"]
        found = next((m for m in self._model_objects() if m["id"] == wanted), None)
        if found is None:
            return error_response(model_not_found(wanted))
        return Response(orjson.dumps(found), media_type=JSON)

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    async def admin_fleet(self, request: Request) -> Response:
        return Response(orjson.dumps(self.state.fleet.snapshot()), media_type=JSON)
