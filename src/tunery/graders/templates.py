"""Grader templates: ``{{ item.answer }}``, ``{{ item.meta.tags[0] }}``, ``{{ sample.output_text }}``.

Only the ``item`` (the dataset row) and ``sample`` (the model's output: ``output_text``, ``output_json``,
``output_tools``, ``choices``) namespaces exist. A path goes through object keys with ``.key`` and list
elements with ``[n]``. Strings are inserted as they are; any other value as JSON. A path that names
nothing is an error, never an empty string, so a typo cannot grade every sample 0 in silence.
"""

from __future__ import annotations

import json
import re
from typing import Any

_TAG = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(-?\d+)\]|\[\"([^\"]*)\"\]|\['([^']*)'\]")
NAMESPACES = ("item", "sample")


class TemplateError(ValueError):
    """A template names a variable that does not exist, or is not a ``{{ namespace.path }}``."""


def template_paths(text: str) -> list[tuple[str, list[str | int]]]:
    """The variables ``text`` uses, as (namespace, steps); raises ``TemplateError`` on a bad one."""
    return [_parse(m.group(1)) for m in _TAG.finditer(text)]


def render(text: str, namespaces: dict[str, Any]) -> str:
    """``text`` with every ``{{ ... }}`` replaced by its value from ``namespaces``."""

    def value(match: re.Match[str]) -> str:
        found = lookup(match.group(1), namespaces)
        return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)

    return _TAG.sub(value, text)


def lookup(expression: str, namespaces: dict[str, Any]) -> Any:
    namespace, steps = _parse(expression)
    current = namespaces[namespace]
    walked = namespace
    for step in steps:
        try:
            current = current[step]
        except (KeyError, IndexError, TypeError):
            raise TemplateError(f"{{{{ {expression} }}}}: {walked} has no {_show(step)}") from None
        walked += _show(step)
    return current


def _parse(expression: str) -> tuple[str, list[str | int]]:
    head, _, rest = expression.partition(".")
    head, bracket, tail = head.partition("[")
    rest = (bracket + tail + ("." + rest if rest else "")) if bracket else ("." + rest if rest else "")
    if head not in NAMESPACES:
        raise TemplateError(f"{{{{ {expression} }}}}: templates read the item or sample namespace, "
                            f"as in {{{{ item.answer }}}} or {{{{ sample.output_text }}}}")
    steps: list[str | int] = []
    pos = 0
    while pos < len(rest):
        m = _STEP.match(rest, pos)
        if m is None:
            raise TemplateError(f"{{{{ {expression} }}}}: cannot read {rest[pos:]!r}; use .key or [index]")
        key, index, dq, sq = m.groups()
        steps.append(int(index) if index is not None else (key if key is not None else (dq if dq is not None else sq)))
        pos = m.end()
    if not steps:
        raise TemplateError(f"{{{{ {expression} }}}}: name a variable inside {head}, as in {{{{ {head}.name }}}}")
    return head, steps


def _show(step: str | int) -> str:
    return f"[{step}]" if isinstance(step, int) else f".{step}"
