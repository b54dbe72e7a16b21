"""`tunery worker`: claim and run fine-tuning jobs from the shared database."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from tunery.cli.options import DataDir, load_settings
from tunery.worker.loop import run_worker


def worker(
    data_dir: DataDir = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="Only run jobs for these base models.")] = None,
) -> None:
    """Run a worker: claims queued jobs and trains them, until SIGTERM/Ctrl-C (the running job is
    checkpointed and requeued)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_worker(load_settings(data_dir), models=model or None)
