"""Options shared by the server-side commands (they act on a data dir directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunery.settings import Settings
from tunery.store.db import Database

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (default $TUNERY_DATA_DIR or ~/.tunery).")
]


def load_settings(data_dir: Path | None, **overrides: object) -> Settings:
    """The settings, with the data dir they name made private to this user (see
    ``Settings.make_private_data_dir``): these commands create the database, blobs and keys."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    settings = Settings(**values)  # type: ignore[arg-type]
    settings.make_private_data_dir()
    return settings


def open_db(settings: Settings) -> Database:
    db = Database(settings.resolved_database_url)
    db.migrate()
    return db
