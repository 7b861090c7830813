"""`switchboard ray-stop`: ends the shared control actor of a Ray deployment and the replicas it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def ray_stop(
    address: str = typer.Option("auto", "--ray", help="Ray cluster address (host:port, or 'auto')."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Config whose cluster settings name the actor (namespace, name)."),
) -> None:
    """Stop the Switchboard fleet on a Ray cluster (gateways leave it running when they exit: it is shared)."""
    from switchboard.cluster.ray_control import stop_control_actor
    from switchboard.config import ConfigError, load_config
    from switchboard.config.schema import RayClusterConfig

    settings = RayClusterConfig(kind="ray")
    if config is not None:
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if isinstance(cfg.cluster, RayClusterConfig):
            settings = cfg.cluster
    settings = settings.model_copy(update={"address": address})
    if stop_control_actor(settings):
        typer.echo(f"stopped '{settings.control_actor}' (namespace '{settings.namespace}') and its replicas")
    else:
        typer.echo(f"no '{settings.control_actor}' actor in namespace '{settings.namespace}'")


def register(app: typer.Typer) -> None:
    app.command("ray-stop")(ray_stop)
