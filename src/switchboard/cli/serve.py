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
    router: Optional[Path] = typer.Option(
        None, "--router", help="Router directory for model 'auto' (from `switchboard router train`); overrides the config's router.path."
    ),
    no_router: bool = typer.Option(False, "--no-router", help="Answer 'auto' with the default expert instead of routing."),
    log_format: str = typer.Option("text", "--log-format", help="text, or json: one JSON object per line, with the request id."),
    access_log: bool = typer.Option(False, "--access-log", help="Log one line per request (expert, replica, outcome, latency, USD)."),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Run the replicas on the Ray cluster at this address (host:port, or 'auto'); overrides the config's cluster."
    ),
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
    if ray is not None:
        from switchboard.config.schema import RayClusterConfig

        settings = cfg.cluster.model_dump() if isinstance(cfg.cluster, RayClusterConfig) else {"kind": "ray"}
        cfg = cfg.model_copy(update={"cluster": RayClusterConfig.model_validate({**settings, "address": ray})})
    chooser = None
    router = router if router is not None else (Path(cfg.router.path) if cfg.router.path else None)
    if not no_router and cfg.router.enabled:
        from switchboard.router import RouterLoadError, load_default_router, load_router
        from switchboard.router.chooser import RouterChooser, configured_usd_weight

        try:
            loaded = load_router(router) if router is not None else load_default_router()
        except RouterLoadError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        online = None
        if cfg.router.online.enabled:
            import numpy as np

            from switchboard.online import OnlineLearner

            online = OnlineLearner(loaded, cfg.router.online, np.random.default_rng())  # exploration: fresh entropy per run
        chooser = RouterChooser(loaded, cfg.default_expert_id, configured_usd_weight(cfg.control_plane.policies), online)
    if log_format not in ("text", "json"):
        typer.echo(f"error: --log-format must be text or json, not {log_format!r}", err=True)
        raise typer.Exit(2)
    from switchboard.gateway.auth import AuthConfigError

    try:
        run_server(cfg, host=host, port=port, log_level=log_level, chooser=chooser, log_format=log_format, access_log=access_log)
    except (AuthConfigError, ConnectionError) as exc:  # ConnectionError: `cluster: {kind: ray}` with no cluster at the address
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
