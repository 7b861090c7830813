"""The same gateway mounted on FastAPI instead of our Starlette fast path, for benchmarks/gateway_overhead.py.

Same config, fleet, handlers and lifespan; only the framework's request dispatch differs, which is what the
comparison measures. Run: python benchmarks/_fastapi_gateway.py CONFIG.yaml PORT
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from switchboard.config import load_config
from switchboard.gateway.app import build_app
from switchboard.gateway.responses import JSONBytesResponse, SSEResponse


def _as_starlette_response(handler):
    """FastAPI endpoints return Starlette responses: convert our raw ASGI answers the usual way."""

    async def endpoint(request: Request) -> Response:
        answer = await handler(request)
        if isinstance(answer, JSONBytesResponse):
            return Response(answer.body, media_type="application/json", headers=answer.headers)
        if isinstance(answer, SSEResponse):
            return StreamingResponse(answer.chunks, media_type="text/event-stream", headers=answer.headers)
        return answer

    return endpoint


def main() -> None:
    config = load_config(sys.argv[1])
    ours = build_app(config)  # its Starlette app carries the lifespan (fleet start/stop) and the handlers
    handlers = {route.path: route.endpoint for route in ours.app.routes if hasattr(route, "endpoint")}
    app = FastAPI(lifespan=ours.app.router.lifespan_context, openapi_url=None)
    for path in ("/v1/chat/completions", "/v1/completions"):
        app.add_api_route(path, _as_starlette_response(handlers[path]), methods=["POST"])
    app.add_api_route("/healthz", handlers["/healthz"], methods=["GET"])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), loop="uvloop", http="httptools", log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
