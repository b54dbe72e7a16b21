"""Logging for the server-side commands (`tunery serve`, `tunery worker`): plain text lines, or
with ``TUNERY_LOG_FORMAT=json`` one JSON object per line — ``ts``, ``level``, ``logger``,
``message``, the exception if any, plus the structured fields a record carries in
``extra={"fields": {...}}`` (the API's per-request line has method, path, route, status,
duration_ms and client).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from tunery.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def uvicorn_log_config(settings: Settings) -> dict[str, Any] | None:
    """uvicorn's ``log_config``: its default (text) or, for JSON, its loggers sent to our root
    handler (its access log is replaced by ``tunery.access``; see api/routes/metrics.py)."""
    if settings.log_format != "json":
        return None
    quiet = {"handlers": [], "propagate": True, "level": "INFO"}
    return {"version": 1, "disable_existing_loggers": False,
            "loggers": {"uvicorn": quiet, "uvicorn.error": quiet, "uvicorn.access": {**quiet, "level": "WARNING"}}}
