"""`tunery inference`: an inference engine node (the process `tunery serve` also runs for itself)."""

from __future__ import annotations

from typing import Annotated

import typer

from tunery.cli.options import DataDir, load_settings
from tunery.logs import configure_logging


def inference(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default $TUNERY_INFERENCE_HOST, "
                                                  "127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default $TUNERY_INFERENCE_PORT, else 8100).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Serve inference to the API nodes: models stay loaded, requests are batched together. The API
    reaches it through TUNERY_INFERENCE_URLS; it needs the API's TUNERY_SECRET_KEY and blob settings."""
    from tunery.inference.server import serve_engine  # torch and transformers load here, not for --help

    settings = load_settings(data_dir)
    configure_logging(settings)
    serve_engine(settings, host or settings.inference_host, port or settings.inference_port or 8100)
