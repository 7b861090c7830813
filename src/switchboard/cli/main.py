"""The `switchboard` command line: `serve`, and sub-commands per concern (`router`, `sim`, ...).

Each sub-command module keeps its heavy imports inside the command functions, so `switchboard --help`
stays instant.
"""

from __future__ import annotations

import typer

from switchboard.cli import serve as serve_cmd

app = typer.Typer(
    name="switchboard",
    help="Serverless mixture-of-experts serving: one OpenAI-compatible endpoint in front of many experts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve_cmd.serve)


def _register_subcommands() -> None:
    """Adds the sub-command groups that exist; each lives in its own module under switchboard.cli."""
    import importlib

    for name in ("router", "sim", "keys", "status", "ray", "embeddings"):
        try:
            module = importlib.import_module(f"switchboard.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"switchboard.cli.{name}":
                continue
            raise
        module.register(app)


def main() -> None:
    _register_subcommands()
    app()
