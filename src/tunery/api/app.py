"""``install_api(app, settings)``: the HTTP API's routes, error handlers and middlewares on an
application that ``tunery.app.create_app`` assembles (with the dashboard beside it)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from tunery.api import openai
from tunery.api.errors import install_error_handlers
from tunery.api.receiving import BodyIdleTimeout
from tunery.api.routes import (
    chat_completions,
    completions,
    download,
    downloads,
    files,
    fine_tunes,
    graders,
    health,
    metrics,
    models,
    uploads,
)
from tunery.settings import Settings

# Matched in this order, and a request is matched against every router before its own: the jobs
# routes every SDK polls go first.
ROUTERS = (fine_tunes.router, health.router, files.router, uploads.router, openai.router, download.router,
           downloads.router, models.router, graders.router, metrics.router, chat_completions.router,
           completions.router)


class DoubleV1Alias:
    """Serve ``/v1/v1/...`` as ``/v1/...``: a base_url ending in /v1 is a common client mistake."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/v1/"):
            scope = dict(scope, path=scope["path"][3:], raw_path=scope["raw_path"][3:])
        await self.app(scope, receive, send)


def install_api(app: FastAPI, settings: Settings) -> None:
    """Add the API to ``app``. Its middlewares wrap the whole application, the dashboard included:
    request metrics outermost, so they time everything (and see the matched route)."""
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(DoubleV1Alias)
    app.add_middleware(BodyIdleTimeout, idle_s=settings.body_idle_timeout_s)
    app.state.request_stats = metrics.RequestStats()
    app.add_middleware(metrics.RequestMetrics, stats=app.state.request_stats,
                       json_logs=settings.log_format == "json")
