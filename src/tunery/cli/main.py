"""The `tunery` command. Run `tunery --help`.

Each command's module is imported only when that command runs: the server-side modules pull in
torch and transformers (seconds of start-up), which a `tunery files list` should not pay for.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import typer

from tunery import __version__
from tunery.cli.client import OneLineErrors

# name → (module under tunery.cli, attribute): a Typer app (a command group) or a command function.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "serve"),
    "worker": ("worker", "worker"),
    "inference": ("inference", "inference"),
    "db": ("db", "app"),
    "keys": ("keys", "app"),
    "models": ("models", "app"),
    "files": ("files", "app"),
    "fine-tuning": ("fine_tuning", "app"),
    "quickstart": ("quickstart", "quickstart"),
    "chat": ("chat", "chat"),
}


class LazyCommands(OneLineErrors):
    """The top-level group: resolves the commands in ``COMMANDS`` on first use."""

    def list_commands(self, ctx: Any) -> list[str]:  # ctx: Typer's vendored click.Context
        return [*COMMANDS, *super().list_commands(ctx)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attr = COMMANDS[cmd_name]
        target = getattr(import_module(f"tunery.cli.{module}"), attr)
        if not isinstance(target, typer.Typer):
            # A single-command Typer app converts to that command itself.
            single = typer.Typer(add_completion=False)
            single.command(cmd_name)(target)
            target = single
        command = typer.main.get_command(target)
        command.name = cmd_name
        return command


app = typer.Typer(cls=LazyCommands, no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """tunery: self-hosted LLM fine-tuning."""  # a callback keeps Typer in group mode


@app.command()
def version() -> None:
    """Print the tunery version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()
