"""The `tunery` command. Run `tunery --help`."""

from __future__ import annotations

import typer

from tunery import __version__
from tunery.cli import keys, serve, worker

app = typer.Typer(no_args_is_help=True, add_completion=False, help="tunery: self-hosted LLM fine-tuning.")
app.command("serve")(serve.serve)
app.command("worker")(worker.worker)
app.add_typer(keys.app, name="keys")


@app.command()
def version() -> None:
    """Print the tunery version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
