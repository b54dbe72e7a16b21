"""How the CLI shows which text is trained: the rendered text of a row with its trained segments
highlighted on a colour terminal, or wrapped in ``[[ ]]`` where there is no colour (pipes, NO_COLOR),
so the marking survives being copied or grepped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.text import Text

from tunery.cli.output import console

TRAINED_STYLE = "bold green"
OPEN, CLOSE = "[[", "]]"


def print_row(title: str, segments: Iterable[Mapping[str, Any]]) -> None:
    out = console()
    plain = out.no_color or not out.is_terminal
    text = Text()
    for segment in segments:
        piece = str(segment["text"])
        if segment["trained"]:
            text.append(f"{OPEN}{piece}{CLOSE}" if plain else piece, style="" if plain else TRAINED_STYLE)
        else:
            text.append(piece, style="" if plain else "dim")
    out.print(title, style="bold", highlight=False)
    out.print(text, highlight=False, markup=False, soft_wrap=True)


def legend() -> str:
    out = console()
    if out.no_color or not out.is_terminal:
        return f"Trained text is between {OPEN} and {CLOSE}."
    return "Trained text is in bold green; the rest is context the model reads but is not trained on."
