"""`tunery worker`: claim and run fine-tuning jobs from the shared database."""

from __future__ import annotations

from typing import Annotated

import typer

from tunery.cli.options import DataDir, load_settings
from tunery.logs import configure_logging
from tunery.worker.loop import run_worker


def worker(
    data_dir: DataDir = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Only run jobs for these base models (default $TUNERY_WORKER_MODELS, else any).")] = None,
) -> None:
    """Run a worker: claims queued jobs and trains them, until SIGTERM/Ctrl-C (the running job is
    checkpointed and requeued)."""
    settings = load_settings(data_dir)
    configure_logging(settings)
    run_worker(settings, models=model or None)
