"""Running the gateway on uvicorn with uvloop and httptools."""

from __future__ import annotations

import logging

import uvicorn

from switchboard.config.schema import SwitchboardConfig
from switchboard.gateway.app import build_app
from switchboard.gateway.choosing import ExpertChooser


def run_server(
    config: SwitchboardConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    chooser: ExpertChooser | None = None,
) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app(config, chooser=chooser)
    uvicorn.run(
        app, host=host, port=port, loop="uvloop", http="httptools", log_level=log_level,
        access_log=False, timeout_graceful_shutdown=30,
    )
