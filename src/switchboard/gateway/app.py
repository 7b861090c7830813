"""The ASGI application: Starlette routes behind a thin dispatcher that sends the two hot endpoints straight
to their handlers, OpenAI-style errors for every failure, the fleet started and stopped with the app's
lifespan.

Why the dispatcher: a CPU profile of the gateway under load (benchmarks/gateway_overhead.py) showed Starlette's
router and exception middleware costing about a sixth of each proxied request; the generation endpoints
skip them and keep their own catch-all, everything else goes through Starlette as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from switchboard.config.schema import RayClusterConfig, SwitchboardConfig
from switchboard.gateway.auth import AuthMiddleware, MeteringLog, TenantGate
from switchboard.gateway.batches.endpoints import Batches
from switchboard.gateway.batches.runner import BatchRunner
from switchboard.gateway.choosing import DefaultExpertChooser, ExpertChooser
from switchboard.gateway.conversations import Conversations
from switchboard.gateway.embeddings import EmbeddingsEndpoint
from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.feedback import FeedbackEndpoint
from switchboard.gateway.files import Files
from switchboard.gateway.handlers import Handlers
from switchboard.gateway.openapi import build_openapi
from switchboard.gateway.responses_api.handler import ResponsesHandler, cancel as cancel_response
from switchboard.gateway.state import GatewayState
from switchboard.gateway.stored_chats.endpoints import StoredChats
from switchboard.observability.feed import ObservabilityEndpoints
from switchboard.observability.metrics import Observability
from switchboard.runtime.fleet import EngineFactory, LiveFleet
from switchboard.storage.chat_completions import ChatCompletionStore, DisabledChatCompletionStore
from switchboard.storage.conversations import ConversationStore, DisabledConversationStore
from switchboard.storage.files import DisabledFileStore, FileStore
from switchboard.storage.responses import DisabledResponseStore, ResponseStore
from switchboard.storage.writer import DisabledRequestLog, RequestLog

log = logging.getLogger("switchboard.gateway")
DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard" / "static"


def build_app(
    config: SwitchboardConfig,
    *,
    chooser: ExpertChooser | None = None,
    fleet: LiveFleet | None = None,
    engine_factory: EngineFactory | None = None,
    registry: Any = None,
    access_log: bool = False,
    request_log: RequestLog | DisabledRequestLog | None = None,
    environ: Mapping[str, str] | None = None,
) -> "FastPathApp | AuthMiddleware":
    """The gateway for `config`. The fleet starts when the app's lifespan starts (uvicorn, or a test client).

    `registry` is the prometheus_client `CollectorRegistry` behind `/metrics` (a fresh one if omitted);
    `access_log` logs one line per request to the `switchboard.access` logger. `request_log` is the durable
    request log (default: from `config.storage`, its default SQLite path resolved against `environ`, by
    default `os.environ`). With `auth.enabled`, the app is wrapped in `AuthMiddleware` and the admin key is read
    from `environ` (raises AuthConfigError if it is missing).
    """
    environ = os.environ if environ is None else environ
    if fleet is None and isinstance(config.cluster, RayClusterConfig):
        from switchboard.cluster.ray_gateway import RemoteFleet

        fleet = RemoteFleet(config, **({"engine_factory": engine_factory} if engine_factory else {}))  # type: ignore[assignment]
    if fleet is None:
        fleet = LiveFleet(config, engine_factory=engine_factory) if engine_factory else LiveFleet(config)
    observability = Observability.for_app(config, fleet, registry, access_log=access_log)
    state = GatewayState(
        config=config,
        fleet=fleet,
        chooser=chooser or DefaultExpertChooser(config.default_expert_id),
        started_at=int(time.time()),
        observability=observability,
    )
    if request_log is None:
        request_log = RequestLog.for_config(config, environ) if config.storage.enabled else DisabledRequestLog()
    gate = TenantGate(config, environ, fleet, state.chooser) if config.auth.enabled else None
    handlers = Handlers(state, MeteringLog(request_log, gate) if gate else request_log, gate)
    embeddings = EmbeddingsEndpoint(config, handlers.request_log, handlers.gate, observability.requests, lambda: handlers.is_draining, environ)
    online = getattr(state.chooser, "online", None)  # the router's online learner (switchboard.online), if any
    feedback = FeedbackEndpoint(request_log, online)
    conversations = Conversations(conversation_store(config, request_log), config.gateway.max_body_bytes,
                                  turn_wait_s=config.gateway.request_timeout_s)
    responses = ResponsesHandler(handlers, response_store(config, request_log), conversations)
    stored_chats = StoredChats(chat_completion_store(config, request_log), config.gateway.max_body_bytes)
    handlers.stored_chats = stored_chats
    file_store = DisabledFileStore(why) if (why := _why_not_stored(config, request_log)) else FileStore(request_log.read)
    files = Files(file_store, config.batches.max_file_bytes)
    runners: list[BatchRunner] = []  # the batch runner, once the app it sends requests to is built (below)
    batches = Batches(files, lambda: [r.wake() for r in runners])
    observe = ObservabilityEndpoints(fleet, observability)
    dashboard_html = (DASHBOARD_DIR / "index.html").read_bytes()

    async def dashboard(_: Request) -> Response:
        return Response(dashboard_html, media_type="text/html; charset=utf-8")
    openapi_bytes = orjson.dumps(build_openapi())

    async def openapi(_: Request) -> Response:
        return Response(openapi_bytes, media_type="application/json")

    loops: list[asyncio.AbstractEventLoop] = []

    def begin_drain(timeout_s: float) -> None:
        """Graceful shutdown's first step, safe to call from a signal handler: new requests get 503; in-flight
        ones (streams included) get `timeout_s` to finish, then end with an explicit error."""
        if loops:
            loops[0].call_soon_threadsafe(handlers.begin_drain, timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        loops.append(asyncio.get_running_loop())
        await request_log.start()
        if gate is not None:
            try:
                await gate.start()  # after the request log: the same database; refuses to start without its keys
            except BaseException:
                await request_log.stop()
                raise
        await fleet.start()
        handlers.prompt_tokens.preload(config.experts)
        metrics_sync = asyncio.create_task(observe.sync_forever(), name="switchboard-metrics-sync")
        restoring = asyncio.create_task(restore_online(online, request_log), name="switchboard-online-restore")
        for runner in runners:
            await runner.start()
        try:
            yield
        finally:
            for runner in runners:
                await runner.stop()  # first: its requests in flight end before the fleet does (they run again later)
            restoring.cancel()
            metrics_sync.cancel()
            await fleet.stop()
            await embeddings.stop()
            await request_log.stop()  # after the fleet: requests finishing during its stop are logged too
            if gate is not None:
                await gate.stop()

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else "method_not_allowed"), dict(exc.headers or {}))

    async def internal_error(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(ApiError(500, f"internal error in the gateway: {type(exc).__name__}", code="internal_error"))

    routes = [
        Route("/v1/chat/completions", handlers.chat_completions, methods=["POST"]),
        Route("/v1/chat/completions", stored_chats.list, methods=["GET"]),
        Route("/v1/chat/completions/{completion_id}", stored_chats.get, methods=["GET"]),
        Route("/v1/chat/completions/{completion_id}", stored_chats.update, methods=["POST"]),
        Route("/v1/chat/completions/{completion_id}", stored_chats.delete, methods=["DELETE"]),
        Route("/v1/chat/completions/{completion_id}/messages", stored_chats.messages, methods=["GET"]),
        Route("/v1/completions", handlers.completions, methods=["POST"]),
        Route("/v1/responses", responses.post, methods=["POST"]),
        Route("/v1/responses/input_tokens", responses.input_tokens, methods=["POST"]),
        Route("/v1/responses/{response_id}", responses.get, methods=["GET"]),
        Route("/v1/responses/{response_id}", responses.delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", responses.input_items, methods=["GET"]),
        Route("/v1/responses/{response_id}/cancel", cancel_response, methods=["POST"]),
        Route("/v1/conversations", conversations.create, methods=["POST"]),
        Route("/v1/conversations/{conversation_id}", conversations.get, methods=["GET"]),
        Route("/v1/conversations/{conversation_id}", conversations.update, methods=["POST"]),
        Route("/v1/conversations/{conversation_id}", conversations.delete, methods=["DELETE"]),
        Route("/v1/conversations/{conversation_id}/items", conversations.list_items, methods=["GET"]),
        Route("/v1/conversations/{conversation_id}/items", conversations.add_items, methods=["POST"]),
        Route("/v1/conversations/{conversation_id}/items/{item_id}", conversations.get_item, methods=["GET"]),
        Route("/v1/conversations/{conversation_id}/items/{item_id}", conversations.delete_item, methods=["DELETE"]),
        Route("/v1/embeddings", embeddings.post, methods=["POST"]),
        Route("/v1/files", files.upload, methods=["POST"]),
        Route("/v1/files", files.list, methods=["GET"]),
        Route("/v1/files/{file_id}", files.get, methods=["GET"]),
        Route("/v1/files/{file_id}", files.delete, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", files.content, methods=["GET"]),
        Route("/v1/batches", batches.create, methods=["POST"]),
        Route("/v1/batches", batches.list, methods=["GET"]),
        Route("/v1/batches/{batch_id}", batches.get, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", batches.cancel, methods=["POST"]),
        Route("/v1/models", handlers.models, methods=["GET"]),
        Route("/v1/models/{model:path}", handlers.model, methods=["GET"]),  # ids may hold "/" (org/name)
        Route("/v1/feedback", feedback.post, methods=["POST"]),
        Route("/healthz", handlers.healthz, methods=["GET"]),
        Route("/admin/fleet", handlers.admin_fleet, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", observe.metrics, methods=["GET"]),
        Route("/admin/events", observe.events, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
        Mount("/dashboard/static", StaticFiles(directory=DASHBOARD_DIR), name="dashboard-static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.gateway = state
    app.state.request_log = request_log
    app.state.end_streams = observe.end_streams
    app.state.tenants = gate
    app.state.begin_drain = begin_drain
    fast = FastPathApp(app, {"/v1/chat/completions": handlers.chat_completions, "/v1/completions": handlers.completions,
                             "/v1/responses": responses.post})
    if file_store.enabled:
        runners.append(BatchRunner(file_store, fast, gate, config.batches, observability.batches))
    guarded = AuthMiddleware(fast, gate) if gate is not None else fast
    return with_cors(guarded, config.gateway.cors_allow_origins) if config.gateway.cors_allow_origins else guarded


# What a browser page may read of an answer beyond the CORS-safelisted headers: the request's id (for feedback),
# where it was routed and served, a key's policy and rate limits, and a rate limit's wait.
EXPOSED_HEADERS = ["x-request-id", "x-switchboard-expert", "x-switchboard-route", "x-switchboard-replica", "x-switchboard-cold-start",
                   "x-switchboard-failover", "x-switchboard-upstream-request-id", "retry-after", "x-switchboard-key-policy",
                   "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                   "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"]


def with_cors(app: Any, origins: list[str]) -> Any:
    """`app` answering browsers' CORS preflights for `origins` and marking its answers readable by their pages
    (Starlette's CORSMiddleware). Outermost, so a preflight — which carries no API key — is answered before auth;
    the request that follows is authenticated as any other. No cookies are involved (keys are bearer tokens)."""
    from starlette.middleware.cors import CORSMiddleware

    cors = CORSMiddleware(app, allow_origins=origins, allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"],
                          expose_headers=EXPOSED_HEADERS, max_age=600)
    cors.state = app.state  # type: ignore[attr-defined]  # the app's state stays reachable from the outermost layer, as below it
    return cors


def _why_not_stored(config: SwitchboardConfig, request_log: Any) -> str | None:
    """Why nothing users make is kept (stored Responses and chat completions are their conversations), or None."""
    if not request_log.enabled:
        return "storage.enabled is false"
    if not config.storage.store_prompts:
        return "storage.store_prompts is false"
    return None


def response_store(config: SwitchboardConfig, request_log: Any) -> ResponseStore | DisabledResponseStore:
    """Where `POST /v1/responses` keeps Responses: the request log's database, unless storage is off or prompts
    are not to be kept."""
    why = _why_not_stored(config, request_log)
    return DisabledResponseStore(why) if why else ResponseStore(request_log.read, config.storage.response_retention_days * 86400.0)


def conversation_store(config: SwitchboardConfig, request_log: Any) -> ConversationStore | DisabledConversationStore:
    """Where conversations (`/v1/conversations`) are kept: the request log's database, unless storage is off or
    prompts are not to be kept; never expired."""
    why = _why_not_stored(config, request_log)
    return DisabledConversationStore(why) if why else ConversationStore(request_log.read)


def chat_completion_store(config: SwitchboardConfig, request_log: Any) -> ChatCompletionStore | DisabledChatCompletionStore:
    """Where `store: true` chat completions are kept: as stored Responses are (the same database and retention)."""
    why = _why_not_stored(config, request_log)
    return DisabledChatCompletionStore(why) if why else ChatCompletionStore(request_log.read, config.storage.response_retention_days * 86400.0)


async def restore_online(online: Any, request_log: Any) -> None:
    """Rebuilds the router's online corrections from the request log, in the background: routing starts at
    once and the corrections fill in (seconds for thousands of events). A failure is logged, not fatal."""
    if online is None or not request_log.enabled or not online.settings.enabled:
        return
    from switchboard.online.restore import logged_feedback

    try:
        events = await request_log.read(logged_feedback)
        learned = await asyncio.to_thread(online.restore, events)
    except Exception as exc:  # noqa: BLE001 — serving goes on without the past corrections
        log.error("online learning: could not restore from the request log (%s: %s)", type(exc).__name__, exc)
        return
    log.info("online learning: %d of %d logged feedback events restored", learned, len(events))


class FastPathApp:
    """Sends POSTs to `hot_routes` directly to their handlers; everything else to the wrapped Starlette app."""

    def __init__(self, app: Starlette, hot_routes: dict[str, Any]) -> None:
        self.app = app
        self.state = app.state
        self.hot_routes = hot_routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.hot_routes.get(scope["path"])
            if handler is not None:
                try:
                    response = await handler(Request(scope, receive))
                except Exception as exc:  # noqa: BLE001 — the same safety net Starlette's handler gives other routes
                    log.exception("unhandled error", exc_info=exc)
                    response = error_response(ApiError(500, f"internal error in the gateway: {type(exc).__name__}", code="internal_error"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
