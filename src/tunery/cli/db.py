"""`tunery db`: the database schema. Run `tunery db upgrade` once per release, before starting the
new API nodes and workers (they also migrate on start, serialised, so a forgotten upgrade still
works; an explicit one keeps start-up fast and failures visible)."""

from __future__ import annotations

import typer
from alembic.runtime.migration import MigrationContext

from tunery.cli.options import DataDir, load_settings, open_db
from tunery.store.db import Database

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Database schema migrations.")


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}" if at and ":" in credentials else url


@app.command()
def upgrade(data_dir: DataDir = None) -> None:
    """Apply every pending migration to $TUNERY_DATABASE_URL (or the data dir's SQLite)."""
    settings = load_settings(data_dir)
    db = open_db(settings)
    typer.echo(f"{_redacted(db.url)} is at revision {current_revision(db)}")
    db.dispose()


@app.command()
def current(data_dir: DataDir = None) -> None:
    """Print the schema revision the database is at (none when never migrated)."""
    db = Database(load_settings(data_dir).resolved_database_url)
    typer.echo(current_revision(db) or "none")
    db.dispose()


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()

