"""Conversations in, assistant messages out: the model's own chat template renders the prompt, and the
generated text is split into reasoning, content and tool calls by what that template defines.

Tool-call formats recognised in the output (when the request offered tools and the template has them):

    <tool_call>{"name": ..., "arguments": {...}}</tool_call>     Hermes / Qwen / SmolLM3 / tunery's built-ins
    [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]         Mistral
    {"name": ..., "parameters": {...}}                            Llama 3.x (the whole output is the call)

Reasoning is the text up to ``</think>`` when the template knows ``<think>``: from the start of the output
when the rendered prompt already opened the block, or from a ``<think>`` the model writes first. Both
streaming and whole responses go through the same ``OutputParser``, so they always agree.
"""

from __future__ import annotations

import json
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_MARK = "[TOOL_CALLS]"


def template_text(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates
        return "\n".join(str(t) for t in template.values())
    return str(template)


def normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped messages as chat templates expect them: text parts joined into one string (most
    templates only print strings), tool-call arguments as objects rather than JSON text."""
    out = []
    for m in messages:
        m = dict(m)
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            m["content"] = "".join(str(p.get("text", "")) for p in content)
        if m.get("tool_calls"):
            m["tool_calls"] = [_call_with_object_arguments(c) for c in m["tool_calls"]]
        out.append(m)
    return out


def _call_with_object_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with suppress(ValueError):  # not JSON: the template prints it as given
            function["arguments"] = json.loads(arguments)
    return {**call, "function": function}


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                template_kwargs: dict[str, Any]) -> tuple[str, list[int]]:
    """The prompt text and its token ids (the template writes any BOS token itself)."""
    text = tokenizer.apply_chat_template(normalise_messages(messages), tools=tools or None, tokenize=False,
                                         add_generation_prompt=True, **template_kwargs)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return str(text), list(ids)


@dataclass
class ParsedOutput:
    content: str
    reasoning: str | None
    tool_calls: list[dict[str, Any]] | None
    reasoning_tail: str = ""  # released only at the end (held back while it could have been a marker)
    content_tail: str = ""


@dataclass
class OutputParser:
    """Splits generated text, as it arrives, into reasoning and content; withholds tool calls."""

    template: str
    tools: bool
    prompt_text: str = ""
    state: str = field(init=False)  # "reasoning" | "content" | "tool"
    pending: str = ""
    held_call: str = ""
    content: str = ""
    reasoning: str = ""
    started: bool = False
    after_thinking: bool = False  # the whitespace that follows </think> is not content

    def __post_init__(self) -> None:
        self.thinks = THINK_OPEN in self.template
        opened = self.thinks and self.prompt_text.rstrip().endswith(THINK_OPEN)
        self.state = "reasoning" if opened else "content"
        self.markers = self._tool_markers() if self.tools else []

    def _tool_markers(self) -> list[str]:
        markers = []
        if HERMES_OPEN in self.template:
            markers.append(HERMES_OPEN)
        if MISTRAL_MARK in self.template:
            markers.append(MISTRAL_MARK)
        return markers

    @property
    def json_calls(self) -> bool:
        """Llama 3.x style: the template describes calls as a bare JSON object with "parameters"."""
        return self.tools and not self.markers and '"parameters"' in self.template

    def feed(self, text: str) -> tuple[str, str]:
        """Add generated text; returns the (reasoning, content) that may be released now."""
        self.pending += text
        reasoning, content = "", ""
        while True:
            if self.state == "reasoning":
                cut = self.pending.find(THINK_CLOSE)
                if cut < 0:
                    release = _safe_prefix(self.pending, [THINK_CLOSE])
                    reasoning += self.pending[:release]
                    self.pending = self.pending[release:]
                    break
                reasoning += self.pending[:cut]
                self.pending = self.pending[cut + len(THINK_CLOSE) :]
                self.state, self.started, self.after_thinking = "content", False, True
                continue
            if self.state == "tool":
                self.held_call += self.pending
                self.pending = ""
                break
            if not self.started:
                stripped = self.pending.lstrip()
                if not stripped:
                    break
                if self.thinks and THINK_OPEN.startswith(stripped[: len(THINK_OPEN)]):
                    if len(stripped) < len(THINK_OPEN):
                        break  # could still become <think>
                    self.pending = stripped[len(THINK_OPEN) :]
                    self.state = "reasoning"
                    continue
                self.started = True
                if self.after_thinking:
                    self.pending = stripped
                if self.json_calls and stripped.startswith("{"):
                    self.state = "tool"
                    continue
            hits = [(i, m) for m in self.markers if (i := self.pending.find(m)) >= 0]
            if hits:
                cut = min(i for i, _ in hits)
                content += self.pending[:cut]
                self.pending = self.pending[cut:]
                self.state = "tool"
                continue
            release = _safe_prefix(self.pending, self.markers)
            content += self.pending[:release]
            self.pending = self.pending[release:]
            break
        self.reasoning += reasoning
        self.content += content
        return reasoning, content

    def finish(self) -> ParsedOutput:
        """Everything, once generation has ended, with what only the end released (``*_tail``)."""
        reasoning_tail, content_tail = (self.pending, "") if self.state == "reasoning" else ("", self.pending)
        self.pending = ""
        calls = parse_tool_calls(self.held_call) if self.held_call else []
        if self.held_call and not calls:
            content_tail += self.held_call  # not a well-formed call: it is text after all
        self.reasoning += reasoning_tail
        self.content += content_tail
        return ParsedOutput(self.content.rstrip() if calls else self.content, self.reasoning or None, calls or None,
                            reasoning_tail=reasoning_tail, content_tail=content_tail)


def _safe_prefix(text: str, markers: list[str]) -> int:
    """How much of ``text`` can be released: all but a tail that may be the start of a marker."""
    for start in range(max(0, len(text) - max((len(m) for m in markers), default=0) + 1), len(text)):
        if any(m.startswith(text[start:]) for m in markers):
            return start
    return len(text)


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls`` from withheld output text; [] when it is not a well-formed call."""
    objects: list[Any] = []
    text = text.strip()
    try:
        if text.startswith(HERMES_OPEN):
            for block in text.split(HERMES_OPEN)[1:]:
                objects.append(json.loads(block.split(HERMES_CLOSE)[0].strip()))
        elif text.startswith(MISTRAL_MARK):
            found = json.loads(text[len(MISTRAL_MARK) :].strip())
            objects.extend(found if isinstance(found, list) else [found])
        else:
            objects.append(json.loads(text))
    except ValueError:
        return []
    calls = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return []
        arguments = obj.get("arguments", obj.get("parameters", {}))
        calls.append({"index": i, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": obj["name"],
                                   "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return calls
