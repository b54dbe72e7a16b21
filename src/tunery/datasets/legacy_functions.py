"""OpenAI's legacy function calling, rewritten as the tools that chat templates render.

Before ``tools``, OpenAI's chat format had top-level ``functions`` (bare definitions), an assistant's
``function_call`` (``{"name", "arguments"}``) and ``function`` messages carrying the result. Chat
templates know only tools, so for rendering:

    functions: [f, ...]                     → tools: [..., {"type": "function", "function": f}, ...]
    {"role": "assistant", "function_call"}  → {"role": "assistant", "tool_calls": [{"id", "type", "function"}]}
    {"role": "function", "name", "content"} → {"role": "tool", "tool_call_id": <that call's id>, "name", "content"}

Every other field (``weight``, ``content``, ...) is kept, so masking is unchanged. A conversation
without legacy fields comes back as the very same objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def as_tools(messages: Sequence[dict[str, Any]], tools: Sequence[Any] | None = None,
             functions: Sequence[Any] | None = None) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """``(messages, tools)`` with the legacy function-calling fields rewritten as tools."""
    all_tools = [*(tools or ()), *({"type": "function", "function": f} for f in functions or ())]
    out: list[dict[str, Any]] = []
    call_id = ""
    for index, message in enumerate(messages):
        if "function_call" in message:
            call_id = f"call_{index}"
            modern = {k: v for k, v in message.items() if k != "function_call"}
            modern["tool_calls"] = [{"id": call_id, "type": "function", "function": message["function_call"]}]
            out.append(modern)
        elif message.get("role") == "function":
            out.append({**message, "role": "tool", "tool_call_id": call_id})
        else:
            out.append(message)
    return out, all_tools or None
