"""Running the gateway on uvicorn with uvloop and httptools."""

from __future__ import annotations

import gc
from types import FrameType

import uvicorn

from switchboard.config.schema import SwitchboardConfig
from switchboard.gateway.app import build_app
from switchboard.gateway.choosing import ExpertChooser
from switchboard.observability import logs


def run_server(
    config: SwitchboardConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    chooser: ExpertChooser | None = None,
    log_format: str = "text",
    access_log: bool = False,
) -> None:
    """`log_format` "json" writes every log line (uvicorn's too) as one JSON object with the request id;
    `access_log` adds one line per request (expert, replica, outcome, latency, tokens, USD)."""
    is_json = log_format == "json"
    logs.configure(log_level, json_format=is_json)
    app = build_app(config, chooser=chooser, access_log=access_log)

    drain_timeout_s = config.gateway.drain_timeout_s

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Graceful shutdown: uvicorn closes the listener and waits for in-flight requests; the gateway gives
            # them `drain_timeout_s`, after which each ends with an explicit error (a stream with an error
            # event) rather than being cut. Then the lifespan stops the engines and flushes the request log.
            app.state.end_streams()  # open dashboards would otherwise hold the shutdown for its whole grace period
            app.state.begin_drain(drain_timeout_s)
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            # Everything alive now (modules, config, the router, the fleet) lives as long as the server: out of
            # the cyclic collector's sight, so its collections under load scan only request garbage.
            gc.freeze()

    Server(uvicorn.Config(
        app, host=host, port=port, loop="uvloop", http="httptools", log_level=log_level,
        # A margin past the drain timeout for the requests' own error answers; uvicorn cancels what is left.
        access_log=False, timeout_graceful_shutdown=drain_timeout_s + 5, log_config=None,
    )).run()
