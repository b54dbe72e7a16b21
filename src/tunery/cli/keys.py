"""`tunery keys create|list|revoke`: API keys, managed directly in the data dir's database."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tunery.cli.options import DataDir, load_settings, open_db
from tunery.errors import NotFound
from tunery.store.users import create_key, list_keys, revoke_key

app = typer.Typer(no_args_is_help=True, help="Manage API keys.")


@app.command("create")
def create(user: Annotated[str, typer.Option("--user", help="User name (created if new).")],
           data_dir: DataDir = None) -> None:
    """Create an API key for a user and print it (it is shown only once)."""
    db = open_db(load_settings(data_dir))
    with db.session() as s:
        key = create_key(s, user)
    typer.echo(key)


@app.command("list")
def list_(data_dir: DataDir = None) -> None:
    """List API keys (prefixes only)."""
    db = open_db(load_settings(data_dir))
    with db.session() as s:
        keys = list_keys(s)
    table = Table("ID", "User", "Prefix", "Created", "Revoked")
    for k in keys:
        table.add_row(k.id, k.user, k.prefix + "…", k.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      "yes" if k.revoked else "")
    Console().print(table)


@app.command("revoke")
def revoke(key: Annotated[str, typer.Argument(help="Key id (key-…) or the key itself.")],
           data_dir: DataDir = None) -> None:
    """Revoke an API key."""
    db = open_db(load_settings(data_dir))
    try:
        with db.session() as s:
            info = revoke_key(s, key)
    except NotFound as e:
        typer.echo(f"Error: {e.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {info.id} ({info.user})")
