"""The ASGI application: bare Starlette routes (measured faster than FastAPI for this proxy path; see
benchmarks/gateway_overhead.py), OpenAI-style errors for every failure, the fleet started and stopped with
the app's lifespan."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from switchboard.config.schema import SwitchboardConfig
from switchboard.gateway.choosing import DefaultExpertChooser, ExpertChooser
from switchboard.gateway.errors import ApiError, error_response
from switchboard.gateway.handlers import Handlers
from switchboard.gateway.openapi import build_openapi
from switchboard.gateway.state import GatewayState
from switchboard.runtime.fleet import EngineFactory, LiveFleet

log = logging.getLogger("switchboard.gateway")


def build_app(
    config: SwitchboardConfig,
    *,
    chooser: ExpertChooser | None = None,
    fleet: LiveFleet | None = None,
    engine_factory: EngineFactory | None = None,
) -> Starlette:
    """The gateway for `config`. The fleet starts when the app's lifespan starts (uvicorn, or a test client)."""
    if fleet is None:
        fleet = LiveFleet(config, engine_factory=engine_factory) if engine_factory else LiveFleet(config)
    state = GatewayState(
        config=config,
        fleet=fleet,
        chooser=chooser or DefaultExpertChooser(config.default_expert_id),
        started_at=int(time.time()),
    )
    handlers = Handlers(state)
    openapi_bytes = orjson.dumps(build_openapi())

    async def openapi(_: Request) -> Response:
        return Response(openapi_bytes, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await fleet.start()
        try:
            yield
        finally:
            await fleet.stop()

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else "method_not_allowed"), dict(exc.headers or {}))

    async def internal_error(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(ApiError(500, f"internal error in the gateway: {type(exc).__name__}", code="internal_error"))

    routes = [
        Route("/v1/chat/completions", handlers.chat_completions, methods=["POST"]),
        Route("/v1/completions", handlers.completions, methods=["POST"]),
        Route("/v1/models", handlers.models, methods=["GET"]),
        Route("/healthz", handlers.healthz, methods=["GET"]),
        Route("/admin/fleet", handlers.admin_fleet, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.gateway = state
    return app
