"""``create_app(settings)``: the whole web application — the HTTP API (``tunery.api``) and the
dashboard (``tunery.web``) over one context (database, blob store, model catalog). The one module
that knows both front ends; ``tunery serve`` runs what it returns."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tunery import __version__
from tunery.api.app import install_api
from tunery.api.bounded import BoundedPool
from tunery.api.deps import AppContext
from tunery.api.upload_sweeper import SWEEP_INTERVAL_S, UploadSweeper
from tunery.api.validation import FileValidator
from tunery.inference.client import EngineClient
from tunery.inference.protocol import engine_token
from tunery.models.catalog import ModelCatalog
from tunery.settings import Settings
from tunery.storage import open_blob_store
from tunery.store.db import Database
from tunery.store.secrets import SecretBox, seal_plaintext
from tunery.web.routes import router as web_router


def create_app(settings: Settings, db: Database | None = None, engine: EngineClient | None = None) -> FastAPI:
    """``engine`` is how the API reaches inference: ``tunery serve`` passes the client of the engine
    process it supervises; by default it is the nodes in ``TUNERY_INFERENCE_URLS``."""
    tasks = BoundedPool(settings.task_process_count, settings.task_memory_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx: AppContext = app.state.ctx
        sweeper = UploadSweeper(ctx.db, ctx.blobs, settings.abandoned_upload_ttl_s,
                                min(SWEEP_INTERVAL_S, settings.abandoned_upload_ttl_s))
        sweeper.start()
        yield
        sweeper.stop()
        tasks.close()

    app = FastAPI(title="tunery", version=__version__, description="The Together AI fine-tuning API, self-hosted.",
                  lifespan=lifespan)
    if db is None:
        db = Database(settings.resolved_database_url)
        db.migrate()
    blobs = open_blob_store(settings)
    box = SecretBox(settings.signing_key())
    with db.session() as s:
        seal_plaintext(s, box)  # jobs queued before secrets were sealed at rest
    app.state.ctx = AppContext(settings=settings, db=db, blobs=blobs,
                               catalog=ModelCatalog(settings.models_dir, settings.allow_hub_downloads),
                               engine=engine or EngineClient(settings.inference_url_list,
                                                             engine_token(settings.signing_key()),
                                                             settings.inference_start_timeout_s),
                               tasks=tasks, validator=FileValidator(tasks, settings.validation_timeout_s),
                               secrets=box)
    install_api(app, settings)
    app.include_router(web_router)
    return app


def app_from_env() -> FastAPI:
    """The application with settings from the environment: what each process of ``tunery serve
    --api-workers N`` builds (uvicorn imports this factory in each)."""
    return create_app(Settings())
