"""`tunery models list|add|remove|alias|unalias`: the base models this server can fine-tune, managed
directly in the data dir's database (like `tunery keys`). Built-in models are always there; `add`
registers a local Hugging Face model directory under a name that jobs can then use as ``model``;
`alias` lets another name (an OpenAI model's, say) stand for one of them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunery.cli.client import CliError
from tunery.cli.options import DataDir, load_settings, open_db
from tunery.cli.output import Json, print_json, print_table
from tunery.errors import NotFound
from tunery.store.base_models import (
    model_aliases,
    register_model,
    registered_models,
    remove_alias,
    set_alias,
    unregister_model,
)

app = typer.Typer(no_args_is_help=True, help="Manage the base models available for fine-tuning.")


@app.command("list")
def list_(data_dir: DataDir = None, json: Json = False) -> None:
    """List the built-in and registered base models, and the aliases (their path is the model they stand for)."""
    from tunery.models.builtin import BUILTINS
    from tunery.models.catalog import ModelCatalog

    settings = load_settings(data_dir)
    with open_db(settings).session() as s:
        registered, aliases = registered_models(s), model_aliases(s)
    names = ModelCatalog(settings.models_dir).supported(registered)
    rows = [{"name": n, "source": "built-in" if n in BUILTINS else "registered", "path": registered.get(n)}
            for n in names]
    rows += [{"name": alias, "source": "alias", "path": target} for alias, target in aliases.items()]
    if json:
        print_json(rows)
        return
    print_table(["Name", "Source", "Path"], ([r["name"], r["source"], r["path"] or ""] for r in rows))


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The name jobs will use, e.g. acme/llama-3-8b.")],
    path: Annotated[Path, typer.Argument(help="A local Hugging Face model directory (with config.json).")],
    data_dir: DataDir = None,
) -> None:
    """Register a local Hugging Face model directory as a base model (re-adding a name repoints it)."""
    directory = path.expanduser().resolve()
    if not (directory / "config.json").is_file():
        raise CliError(f"{path} is not a Hugging Face model directory (no config.json)")
    if name in builtin_names():
        raise CliError(f'"{name}" is a built-in model; choose another name')
    with open_db(load_settings(data_dir)).session() as s:
        register_model(s, name, str(directory))
    typer.echo(f"Registered {name} → {directory}")


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="A registered model name.")], data_dir: DataDir = None) -> None:
    """Unregister a base model (its files are left alone)."""
    try:
        with open_db(load_settings(data_dir)).session() as s:
            unregister_model(s, name)
    except NotFound as e:
        message = f'"{name}" is a built-in model; it cannot be removed' if name in builtin_names() else e.message
        raise CliError(message) from None
    typer.echo(f"Removed {name}")


@app.command("alias")
def alias(
    name: Annotated[str, typer.Argument(help="The name scripts use, e.g. gpt-4o-mini-2024-07-18.")],
    model: Annotated[str, typer.Argument(help="The base model it stands for: built in, registered, or a "
                                              "Hugging Face id.")],
    data_dir: DataDir = None,
) -> None:
    """Make NAME stand for MODEL in fine-tuning jobs (re-aliasing a name repoints it). Jobs that name the
    alias train MODEL; OpenAI's API shows the alias as the job's model and GET /v1/models says what it
    stands for."""
    from tunery.models.catalog import ModelCatalog

    if name in builtin_names() or ":" in name:
        raise CliError(f'"{name}" is a built-in model name or contains ":"; choose another alias')
    settings = load_settings(data_dir)
    with open_db(settings).session() as s:
        registered = registered_models(s)
        if name in registered:
            raise CliError(f'"{name}" is a registered model; remove it first or choose another alias')
        if model in model_aliases(s):
            raise CliError(f'"{model}" is itself an alias; alias the model it stands for')
        try:  # the model must exist here, so that jobs naming the alias can start
            ModelCatalog(settings.models_dir, settings.allow_hub_downloads).resolve(model, registered)
        except NotFound as e:
            raise CliError(e.message) from None
        set_alias(s, name, model)
    typer.echo(f"Aliased {name} → {model}")


@app.command("unalias")
def unalias(name: Annotated[str, typer.Argument(help="An alias.")], data_dir: DataDir = None) -> None:
    """Remove an alias (jobs already created with it keep their model)."""
    try:
        with open_db(load_settings(data_dir)).session() as s:
            remove_alias(s, name)
    except NotFound as e:
        raise CliError(e.message) from None
    typer.echo(f"Removed alias {name}")


def builtin_names() -> set[str]:
    # Imported here: tunery.models pulls in torch, seconds that `add`/`remove` need not always pay.
    from tunery.models.builtin import BUILTINS

    return set(BUILTINS)
