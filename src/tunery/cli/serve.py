"""`tunery serve`: the API server (plus embedded workers) on 127.0.0.1:8000 by default."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.supervisors.multiprocess import Multiprocess

from tunery.app import create_app
from tunery.cli.options import DataDir, load_settings, open_db
from tunery.inference.client import EngineClient
from tunery.inference.protocol import engine_token
from tunery.inference.supervisor import EngineProcess
from tunery.logs import configure_logging, uvicorn_log_config
from tunery.settings import Settings
from tunery.storage import direct_uploads, open_blob_store
from tunery.store.db import Database
from tunery.store.files import release_interrupted_uploads
from tunery.store.users import create_key, has_any_key
from tunery.worker.pool import WorkerPool

DEFAULT_USER = "default"


def bootstrap_key(settings: Settings, db: Database) -> Path | None:
    """On first start (no keys at all), create a key for the default user and write it to
    ``<data-dir>/api_key`` (mode 0600). Returns the path when a key was created."""
    with db.session() as s:
        if has_any_key(s):
            return None
        key = create_key(s, DEFAULT_USER)
    path = settings.api_key_path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    return path


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    data_dir: DataDir = None,
    workers: Annotated[int | None, typer.Option(help="Embedded worker processes (default 1).")] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Serve the API only (workers run elsewhere).")] = False,
    api_workers: Annotated[int, typer.Option(
        "--api-workers", min=1, help="API processes sharing the port (default 1): more use more cores.")] = 1,
) -> None:
    """Serve the API with embedded defaults (SQLite and blobs under the data dir)."""
    settings = load_settings(data_dir, host=host, port=port)
    db = open_db(settings)
    created = bootstrap_key(settings, db)
    if created:
        typer.echo(f"Created an API key for user '{DEFAULT_USER}' in {created}")
    elif settings.api_key_path.exists():
        typer.echo(f"API key for user '{DEFAULT_USER}': {settings.api_key_path}")
    if direct_uploads(open_blob_store(settings)) is None:
        # This node alone receives the local store's uploads: any still marked in progress were cut
        # off by a restart; reopen them so the client's retry works. Here, once, rather than in each
        # API process, so a restarted API process never reopens one another is receiving.
        with db.session() as s:
            release_interrupted_uploads(s)
    engine_process = embedded_engine(settings)
    engine = None
    if engine_process is not None:
        engine = EngineClient([engine_process.url], engine_token(settings.signing_key()),
                              settings.inference_start_timeout_s, ensure_started=engine_process.ensure_started)
        if settings.inference_start == "eager" or api_workers > 1:
            engine_process.ensure_started()
    count = 0 if no_worker else (settings.workers if workers is None else workers)
    pool = WorkerPool(settings, count)
    typer.echo(f"tunery serving on http://{settings.host}:{settings.port} (data in {settings.data_dir}, "
               f"{api_workers} API process{'es' if api_workers != 1 else ''}, "
               f"{count} worker{'s' if count != 1 else ''})")
    json_logs = settings.log_format == "json"
    if json_logs:
        configure_logging(settings)
    options: dict[str, Any] = dict(host=settings.host, port=settings.port, log_level="info",
                                   timeout_graceful_shutdown=5, access_log=not json_logs,
                                   log_config=uvicorn_log_config(settings) or LOGGING_CONFIG)
    try:
        if api_workers > 1:
            serve_processes(settings, api_workers, engine_process, options)
        else:
            ServerWithWorkers(uvicorn.Config(create_app(settings, db, engine), **options), pool, engine_process).run()
    finally:
        pool.stop()
        if engine_process is not None:
            engine_process.stop()


def serve_processes(settings: Settings, count: int, engine: EngineProcess | None, options: dict[str, Any]) -> None:
    """``--api-workers N``: N uvicorn processes accept on one listening socket, each building the app
    from the environment (``tunery.app:app_from_env``) with this command's settings; uvicorn's
    supervisor restarts one that dies. Heavy request work is shared out: each process runs
    ``TUNERY_TASK_PROCESSES / N`` bounded children (at least one)."""
    os.environ.update({"TUNERY_DATA_DIR": str(settings.data_dir), "TUNERY_HOST": settings.host,
                       "TUNERY_PORT": str(settings.port)})
    os.environ.setdefault("TUNERY_TASK_PROCESSES", str(max(1, settings.task_process_count // count)))
    if engine is not None:  # started by serve(): every API process reaches the one engine
        os.environ["TUNERY_INFERENCE_URLS"] = engine.url
    # A generous health check: on a busy machine a process can take seconds to answer a ping.
    config = uvicorn.Config("tunery.app:app_from_env", factory=True, workers=count, timeout_worker_healthcheck=60,
                            **options)
    Multiprocess(config, sockets=[config.bind_socket()]).run()


def embedded_engine(settings: Settings) -> EngineProcess | None:
    """The inference engine process this server supervises, unless engine nodes are configured."""
    if settings.inference_url_list:
        return None
    return EngineProcess(settings, settings.inference_port or free_port())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerWithWorkers(uvicorn.Server):
    """Stops the embedded workers and engine as part of uvicorn's shutdown: uvicorn re-raises
    SIGTERM/SIGINT once it has shut down, so code after ``run()`` would never get to stop them gracefully."""

    def __init__(self, config: uvicorn.Config, pool: WorkerPool, engine: EngineProcess | None):
        super().__init__(config)
        self.pool = pool
        self.engine = engine

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)
        await asyncio.to_thread(self.pool.stop)
