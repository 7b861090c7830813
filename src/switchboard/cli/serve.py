"""`switchboard serve`: the OpenAI-compatible gateway on uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config; the embedded default if omitted."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", "-p", help="Port to listen on."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the OpenAI-compatible API (chat, completions, models) in front of the configured experts."""
    from switchboard.config import ConfigError, load_config
    from switchboard.config.default import default_config
    from switchboard.gateway.server import run_server

    try:
        cfg = load_config(config) if config is not None else default_config()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    run_server(cfg, host=host, port=port, log_level=log_level)
