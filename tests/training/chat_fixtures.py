"""The official chat templates in ``tests/fixtures/chat_templates`` on the built-in tiny tokenizer.

Each template runs unchanged; the tiny tokenizer gets the special tokens the template writes (so
``<|im_end|>`` is one token, as in the real model) and its BOS/EOS, as the model's own tokenizer has.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
MANIFEST: dict[str, dict[str, Any]] = {
    name: entry for name, entry in json.loads((FIXTURES / "templates.json").read_text()).items()
    if not name.startswith("_")
}
NAMES = sorted(MANIFEST)


def template_text(name: str) -> str:
    return (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")


def fixture_tokenizer(base: Any, name: str) -> Any:
    """A copy of the tiny tokenizer that carries template ``name`` and its special tokens."""
    entry = MANIFEST[name]
    tokenizer = copy.deepcopy(base)
    specials = {"additional_special_tokens": list(entry["special_tokens"])}
    for key in ("bos_token", "eos_token"):
        if entry[key] is not None:
            specials[key] = entry[key]
    tokenizer.add_special_tokens(specials)
    tokenizer.chat_template = template_text(name)
    return tokenizer
