"""``create_app(settings)``: the FastAPI application with its context, error handlers and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from tunery import __version__
from tunery.api.bounded import BoundedPool
from tunery.api.deps import AppContext
from tunery.api.errors import install_error_handlers
from tunery.api.routes import download, files, fine_tunes, health, metrics, models, uploads
from tunery.api.validation import FileValidator
from tunery.models.catalog import ModelCatalog
from tunery.settings import Settings
from tunery.storage import direct_uploads, open_blob_store
from tunery.store.db import Database
from tunery.store.files import release_interrupted_uploads
from tunery.web import routes as web


class DoubleV1Alias:
    """Serve ``/v1/v1/...`` as ``/v1/...``: a base_url ending in /v1 is a common client mistake."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/v1/"):
            scope = dict(scope, path=scope["path"][3:], raw_path=scope["raw_path"][3:])
        await self.app(scope, receive, send)


def create_app(settings: Settings, db: Database | None = None) -> FastAPI:
    tasks = BoundedPool(settings.task_process_count, settings.task_memory_bytes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        tasks.close()

    app = FastAPI(title="tunery", version=__version__, description="The Together AI fine-tuning API, self-hosted.",
                  lifespan=lifespan)
    if db is None:
        db = Database(settings.resolved_database_url)
        db.migrate()
    blobs = open_blob_store(settings)
    if direct_uploads(blobs) is None:
        # The local store's uploads are received by this node alone: any still marked in
        # progress were cut off by a restart; reopen them so the client's retry works.
        with db.session() as s:
            release_interrupted_uploads(s)
    app.state.ctx = AppContext(settings=settings, db=db, blobs=blobs,
                               catalog=ModelCatalog(settings.models_dir, settings.allow_hub_downloads),
                               tasks=tasks, validator=FileValidator(tasks, settings.validation_timeout_s))
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(files.router)
    app.include_router(uploads.router)
    app.include_router(fine_tunes.router)
    app.include_router(download.router)
    app.include_router(models.router)
    app.include_router(metrics.router)
    app.include_router(web.router)
    app.add_middleware(DoubleV1Alias)
    # Outermost, so it times everything (and sees the matched route once the router has run).
    app.state.request_stats = metrics.RequestStats()
    app.add_middleware(metrics.RequestMetrics, stats=app.state.request_stats,
                       json_logs=settings.log_format == "json")
    return app
