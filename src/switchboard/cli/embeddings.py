"""`switchboard embeddings prepare`: export the local embedding model to ONNX once (see embeddings/prepare.py)."""

from __future__ import annotations

from pathlib import Path

import typer

embeddings_app = typer.Typer(help="The local embedding expert behind /v1/embeddings.", no_args_is_help=True)


@embeddings_app.command("prepare")
def prepare(
    model_dir: Path = typer.Option(None, help="A sentence-transformers model directory; default: the packaged all-MiniLM-L6-v2."),
    out: Path = typer.Option(None, help="Where to write the ONNX file; default: the cache the local expert reads."),
    force: bool = typer.Option(False, help="Export again even if the file exists."),
) -> None:
    """Export the model to ONNX (needs torch; serving does not). Prints the file's path."""
    from switchboard.embeddings.prepare import prepare as run

    typer.echo(run(out, model_dir, force=force))


def register(app: typer.Typer) -> None:
    app.add_typer(embeddings_app, name="embeddings")
