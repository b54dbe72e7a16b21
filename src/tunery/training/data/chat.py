"""Where each message of a conversation lands in ONE rendering of it by a model's chat template.

Real templates are not prefix-stable: Qwen3 writes an empty ``<think>`` block only into the last
assistant turn, Phi-3 appends EOS when no generation prompt follows, Mistral v0.3 moves the system
prompt into the last user turn, Gemma trims contents. So turn boundaries cannot be found by
rendering growing prefixes and comparing them with the whole. Instead, the whole conversation is
rendered twice:

* for real, giving the text that is tokenized and trained, and
* with every text field (content, reasoning, tool results) replaced by a *skeleton*: each run of
  words becomes a unique marker, while the edges the templates look at (surrounding whitespace,
  ``<tags>``, emptiness) are kept, so ``| trim``, ``.strip()``, ``split('</think>')`` and friends
  take the same branches and cut the same whitespace as in the real rendering.

Substituting the words back into the skeleton rendering must reproduce the real text exactly; that
check is what makes the mapping exact (a template that rewrites text in another way, e.g. JSON-
escaping a tool result, is aligned glue piece by glue piece instead, and refused when even that is
ambiguous). Every character of the real text is then either inside a message's text or template
glue, and only glue has to be split between turns. A glue piece between the last text of message
``j-1`` and the first text of message ``j`` is split where the template itself would split it:

* the end of turn ``j-1`` is how far the glue agrees with what the template writes after message
  ``j-1`` when the conversation *ends* there (its end-of-turn markers, e.g. ``<|im_end|>\\n``);
* the body of an assistant turn ``j`` starts how far the glue agrees with what the template writes
  after message ``j-1`` with ``add_generation_prompt`` (the header the model is prompted with), so
  everything the model has to generate itself - ``<think>`` blocks, tool calls, the end marker - is
  in the body.

Those two renderings of a prefix are cached by the shape of the conversation and the glue text,
so a dataset costs about two renders per row. Templates with ``{% generation %}`` blocks say
outright which text an assistant generates; their blocks are used for assistant bodies.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from tunery.errors import DatasetInvalid

MARK_OPEN, MARK_CLOSE = "\ufdd0", "\ufdd1"  # Unicode noncharacters: never in real text
_MARKER = re.compile(f"{MARK_OPEN}(\\d+){MARK_CLOSE}")
# What a template may test content for: <tags> (Qwen3's </think>, <tool_response>) and special tokens.
_TAG = re.compile(r"(<[^<>\s]{1,64}>)")
_EDGE = re.compile(r"^(\s*)(.*?)(\s*)$", re.S)
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
TEXT_KEYS = ("content", *REASONING_KEYS)  # and tool call names, under "tool_calls"


class ConversationRefused(DatasetInvalid):
    """The model's chat template refuses this conversation, or renders it in a way whose trained
    tokens cannot be located exactly. The message says which; callers prefix the line."""


@dataclass(frozen=True, slots=True)
class Turn:
    """Character offsets of one message in the rendered text: its turn is ``[start, end)``; for an
    assistant, ``[body, end)`` is what the model generates (no role header)."""

    start: int
    body: int
    end: int


@dataclass(frozen=True, slots=True)
class RenderedChat:
    text: str
    turns: tuple[Turn, ...]  # one per message, in message order
    # (message index, field) whose text the template did not render at all: Qwen3's reasoning of
    # earlier turns, say, or every reasoning for a template that reads no reasoning field.
    dropped: frozenset[tuple[int, str]] = frozenset()


@dataclass(frozen=True, slots=True)
class _Run:
    message: int
    key: str
    text: str


@dataclass(frozen=True, slots=True)
class _Mark:
    """One occurrence of a run's marker: where it is in the skeleton rendering and where the run's
    text is in the real one."""

    shaped_start: int
    shaped_end: int
    real_start: int
    real_end: int
    run: int


@dataclass
class _Skeleton:
    messages: list[dict[str, Any]]
    runs: list[_Run]


class ChatTemplate:
    """One tokenizer's chat template, rendering conversations and locating their turns.

    ``render(messages, tools)`` renders exactly what ``tokenizer.apply_chat_template(messages,
    tools=tools, tokenize=False)`` renders. ``locate(messages, tools)`` also returns each message's
    turn. Both raise :class:`ConversationRefused` with the template's own message when it refuses.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.kwargs = dict(tokenizer.special_tokens_map)
        self._splits: dict[tuple[Any, ...], tuple[int, int, int]] = {}
        self._first_error: ConversationRefused | None = None
        self._rendered_without_calls = False

    def source(self, tools: Sequence[Any] | None) -> str:
        try:
            return str(self.tokenizer.get_chat_template(None, list(tools) if tools else None))
        except ValueError as error:  # no chat template at all
            raise ConversationRefused(f"the model has no chat template to render conversations with ({error})") \
                from None

    def render(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None) -> str:
        for real, prepared in self._renderings(messages, tools):
            if all(_calls_in(real, message) for message in prepared):
                return real
            self._rendered_without_calls = True
        raise self._refusal(messages)

    def locate(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None,
               needed: Sequence[int] | None = None) -> RenderedChat:
        """Render ``messages`` and find the turns of the messages in ``needed`` (default: all).

        Turns of the others are left empty (``Turn(0, 0, 0)``): each located boundary may cost two
        renders of a prefix (cached across conversations of the same shape).
        """
        wanted = list(range(len(messages))) if needed is None else list(needed)
        for real, prepared in self._renderings(messages, tools):
            chat = self._locate(real, prepared, tools, wanted)
            if not any((i, "tool_calls") in chat.dropped for i in wanted):
                return chat
            self._rendered_without_calls = True
        raise self._refusal(messages)

    def _locate(self, real: str, prepared: list[dict[str, Any]], tools: Sequence[Any] | None,
                wanted: list[int]) -> RenderedChat:
        template = self.source(tools)
        skeleton = _skeleton(prepared)
        shaped = _render(template, skeleton.messages, tools, False, self.kwargs)
        marks = _align(shaped, real, skeleton.runs)
        if marks is None:
            raise ConversationRefused(
                "the chat template rewrites message text in a way tunery cannot trace back to the "
                "messages, so the trained tokens cannot be located exactly; set train_on_inputs=true "
                "or upload pre-tokenized Parquet with your own labels")
        seen = {(skeleton.runs[mark.run].message, skeleton.runs[mark.run].key) for mark in marks}
        dropped = frozenset((run.message, run.key) for run in skeleton.runs) - seen
        boundaries = _Boundaries(self, template, skeleton, shaped, marks, len(real), tools)
        generation = _generation_bodies(template, prepared, tools, self.kwargs, real) \
            if _GENERATION.search(template) else {}
        turns = [Turn(0, 0, 0)] * len(prepared)
        for i in wanted:
            start, end = boundaries.cut(i), boundaries.cut(i + 1)
            body = start
            if prepared[i].get("role") == "assistant":
                body, end = generation[i] if i in generation else (max(start, boundaries.body(i)), end)
            turns[i] = Turn(start, body, max(body, end))
        return RenderedChat(real, tuple(turns), dropped)

    def _renderings(self, messages: Sequence[Mapping[str, Any]],
                    tools: Sequence[Any] | None) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Real renderings of the conversation, each with the messages it was rendered from.

        Templates disagree on how a message without text looks, so the messages are offered as
        Hugging Face and vLLM hand them over (None values dropped, JSON-string tool arguments
        parsed into objects), then with empty content on tool-calling messages (Qwen3's template
        fails on missing content), then as written (DeepSeek-R1's concatenates argument strings
        and tests ``content is none``). Callers take the first rendering that renders every tool
        call; the first refusal is kept for ``_refusal``.
        """
        template = self.source(tools)
        self._first_error, self._rendered_without_calls = None, False
        tried: list[list[dict[str, Any]]] = []
        for prepared in _variants(messages):
            if prepared in tried:
                continue
            tried.append(prepared)
            _check_markers_absent(prepared, tools)
            try:
                real = _render(template, prepared, tools, False, self.kwargs)
            except ConversationRefused as error:
                self._first_error = self._first_error or error
                continue
            yield real, prepared

    def _refusal(self, messages: Sequence[Mapping[str, Any]]) -> ConversationRefused:
        if self._first_error is not None and not self._rendered_without_calls:
            return self._first_error
        calls = next(i for i, m in enumerate(messages) if m.get("tool_calls"))
        return ConversationRefused(f"the chat template leaves out the tool calls of messages[{calls}], so they "
                                   "cannot be trained")

    def cached_split(self, key: tuple[Any, ...],
                     compute: Callable[[], tuple[int, int, int]]) -> tuple[int, int, int]:
        found = self._splits.get(key)
        if found is None:
            found = self._splits[key] = compute()
        return found


class _Boundaries:
    """Cut points between consecutive turns, as offsets in the real text, computed on demand."""

    def __init__(self, owner: ChatTemplate, template: str, skeleton: _Skeleton, shaped: str,
                 marks: list[_Mark], real_length: int, tools: Sequence[Any] | None):
        self.owner, self.template, self.skeleton, self.shaped = owner, template, skeleton, shaped
        self.marks, self.real_length, self.tools = marks, real_length, tools
        self._ends = [mark.shaped_end for mark in marks]  # increasing: occurrences do not overlap
        self._splits: dict[int, tuple[int, int]] = {}

    def cut(self, j: int) -> int:
        """Where turn j starts (= where turn j-1 ends)."""
        if j <= 0:
            return 0
        if j >= len(self.skeleton.messages):
            return self.real_length
        return self._split(j)[0]

    def body(self, j: int) -> int:
        """Where the generated part of assistant turn j starts."""
        return self._split(j)[1] if j > 0 else 0

    def _split(self, j: int) -> tuple[int, int]:
        """(end of turn j-1, start of the body of turn j), as offsets in the real text.

        The glue is split after the last marker before message j's text, the *anchor*; if the
        template leaves that text out when the conversation stops before j (Gemma 3 writes the
        system prompt into the first user turn, so without a user turn it writes no system
        prompt), an earlier anchor is taken, down to the start of the text.
        """
        if j in self._splits:
            return self._splits[j]
        runs = self.skeleton.runs
        first_later = min((m.shaped_start for m in self.marks if runs[m.run].message >= j), default=len(self.shaped))
        anchors = sorted((m for m in self.marks if m.shaped_end <= first_later), key=lambda m: -m.shaped_end)
        nearest = anchors[0].shaped_end if anchors else 0
        shape = tuple((m.get("role"), bool(m.get("tool_calls")), _kind(m.get("content")))
                      for m in self.skeleton.messages)
        key = (self.template, bool(self.tools), shape, j, self.shaped[nearest:first_later])

        def compute() -> tuple[int, int, int]:
            ends, starts = (self._prefix(j, generation_prompt) for generation_prompt in (False, True))
            for depth, anchor in enumerate([*anchors, None]):
                marker = "" if anchor is None else f"{MARK_OPEN}{anchor.run}{MARK_CLOSE}"
                if marker in ends:
                    glue = self.shaped[anchor.shaped_end if anchor else 0:first_later]
                    end = _outside_markers(glue, _common_prefix(_after(ends, marker), glue))
                    body = _outside_markers(glue, _common_prefix(_after(starts, marker), glue))
                    return depth, end, max(end, body)
            raise AssertionError("the empty marker is in every text")

        depth, end, body = self.owner.cached_split(key, compute)
        glue_start = anchors[depth].shaped_end if depth < len(anchors) else 0
        self._splits[j] = (self._to_real(glue_start + end), self._to_real(glue_start + body))
        return self._splits[j]

    def _prefix(self, j: int, generation_prompt: bool) -> str:
        """The skeleton rendering of the conversation stopped before message j."""
        try:
            return _render(self.template, self.skeleton.messages[:j], self.tools, generation_prompt,
                           self.owner.kwargs)
        except ConversationRefused:
            return ""  # a template that cannot stop here splits nothing off the glue

    def _to_real(self, offset: int) -> int:
        """Map an offset in the skeleton rendering that lies outside markers to the real text."""
        k = bisect.bisect_right(self._ends, offset) - 1
        if k < 0:
            return offset
        mark = self.marks[k]
        return mark.real_end + (offset - mark.shaped_end)


def _after(text: str, marker: str) -> str:
    return text[text.rfind(marker) + len(marker):] if marker else text


def _outside_markers(glue: str, length: int) -> int:
    """``length`` moved back to the start of a marker it would end inside."""
    opened = glue.rfind(MARK_OPEN, 0, length)
    return opened if opened > glue.rfind(MARK_CLOSE, 0, length) else length


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _kind(content: Any) -> str:
    if content is None:
        return "none"
    if isinstance(content, str):
        return "text" if content else "empty"
    return "parts"


# --- preparing messages -------------------------------------------------------------------------


def _variants(messages: Sequence[Mapping[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The forms of the messages offered to a template, in order (see ``_renderings``); all
    without tunery's ``weight``."""
    written = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    normal = [_normalised(m) for m in written]
    yield normal
    yield [{**m, "content": ""} if m.get("tool_calls") and "content" not in m else m for m in normal]
    yield written


def _normalised(message: dict[str, Any]) -> dict[str, Any]:
    message = {k: v for k, v in message.items() if v is not None}
    if message.get("tool_calls"):
        message["tool_calls"] = [_parsed_call(call) for call in message["tool_calls"]]
    return message


def _calls_in(text: str, message: Mapping[str, Any]) -> bool:
    """Whether every tool call of ``message`` is in ``text`` (its function name, at least)."""
    for call in message.get("tool_calls") or ():
        function = call.get("function", call) if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name not in text:
            return False
    return True


def _parsed_call(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    if not isinstance(arguments, dict):
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def _check_markers_absent(messages: list[dict[str, Any]], tools: Sequence[Any] | None) -> None:
    text = json.dumps([messages, tools], ensure_ascii=False)
    if MARK_OPEN in text or MARK_CLOSE in text:
        raise ConversationRefused("the conversation contains U+FDD0 or U+FDD1, Unicode noncharacters that "
                                  "tunery reserves to locate turns; remove them")


def _skeleton(messages: list[dict[str, Any]]) -> _Skeleton:
    runs: list[_Run] = []

    def shape(text: str, owner: int, key: str) -> str:
        pieces = []
        for piece in _TAG.split(text):
            if not piece or _TAG.fullmatch(piece):
                pieces.append(piece)
                continue
            lead, core, trail = _EDGE.match(piece).groups()  # type: ignore[union-attr]
            if core:
                runs.append(_Run(owner, key, core))
                pieces.append(f"{lead}{MARK_OPEN}{len(runs) - 1}{MARK_CLOSE}{trail}")
            else:
                pieces.append(piece)
        return "".join(pieces)

    shaped = []
    for i, message in enumerate(messages):
        copy = dict(message)
        for key in TEXT_KEYS:
            value = copy.get(key)
            if isinstance(value, str):
                copy[key] = shape(value, i, key)
            elif key == "content" and isinstance(value, list):
                copy[key] = [{**part, "text": shape(part["text"], i, key)}
                             if isinstance(part, dict) and isinstance(part.get("text"), str) else part
                             for part in value]
        if isinstance(copy.get("tool_calls"), list):
            copy["tool_calls"] = [_named_call(call, partial(shape, owner=i, key="tool_calls"))
                                  for call in copy["tool_calls"]]
        shaped.append(copy)
    return _Skeleton(shaped, runs)


def _named_call(call: Any, shape: Callable[[str], str]) -> Any:
    """A tool call with its function name shaped: the name is what every template renders of a
    call, so it anchors the turn of a message that has no text of its own."""
    if not isinstance(call, dict):
        return call
    function = call.get("function")
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {**call, "function": {**function, "name": shape(function["name"])}}
    if isinstance(call.get("name"), str):
        return {**call, "name": shape(call["name"])}
    return call


# --- rendering ---------------------------------------------------------------------------------


def _render(template: str, messages: list[dict[str, Any]], tools: Sequence[Any] | None,
            generation_prompt: bool, kwargs: dict[str, Any]) -> str:
    return _jinja(template, messages, tools, generation_prompt, kwargs, blocks=False)[0]


def _jinja(template: str, messages: list[dict[str, Any]], tools: Sequence[Any] | None, generation_prompt: bool,
           kwargs: dict[str, Any], *, blocks: bool) -> tuple[str, list[tuple[int, int]]]:
    """Render as ``apply_chat_template`` does (same function, same variables); with ``blocks``,
    also the character spans of ``{% generation %}`` blocks."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        result: Any = render_jinja_template(
            [messages], tools=list(tools) if tools else None, chat_template=template,
            add_generation_prompt=generation_prompt, return_assistant_tokens_mask=blocks, **kwargs)
    except Exception as error:  # noqa: BLE001 - whatever a template raises is its verdict on the data
        raise ConversationRefused(f"the chat template refuses this conversation: {_template_message(error)}") \
            from None
    rendered, indices = result
    return str(rendered[0]), [(int(a), int(b)) for a, b in (indices[0] if blocks else [])]


def _template_message(error: Exception) -> str:
    import jinja2

    if type(error) is jinja2.exceptions.TemplateError:  # raise_exception("...") in the template
        return str(error)
    return f"{type(error).__name__}: {error}"


def _generation_bodies(template: str, prepared: list[dict[str, Any]], tools: Sequence[Any] | None,
                       kwargs: dict[str, Any], real: str) -> dict[int, tuple[int, int]]:
    """Assistant bodies from the template's ``{% generation %}`` blocks, the k-th block for the k-th
    assistant message; refused when blocks and assistant messages do not pair up."""
    rendered, blocks = _jinja(template, prepared, tools, False, kwargs, blocks=True)
    assistants = [i for i, m in enumerate(prepared) if m.get("role") == "assistant"]
    if rendered != real or len(blocks) != len(assistants):
        raise ConversationRefused(
            f"the chat template marks {len(blocks)} {{% generation %}} blocks for {len(assistants)} "
            "assistant messages, so they cannot be paired up")
    return dict(zip(assistants, blocks, strict=True))


# --- aligning the skeleton rendering with the real one ---------------------------------------


def _align(shaped: str, real: str, runs: list[_Run]) -> list[_Mark] | None:
    """Every marker occurrence in ``shaped``, in order, with where its run's text is in ``real``;
    None when ``real`` is not ``shaped`` with each marker's text put back.

    Markers may appear in any order, more than once, or not at all (a template may move, repeat or
    drop text). Texts are put back verbatim; where that does not give ``real`` (the template wrote
    a text JSON-escaped, say), the glue pieces are matched in order and each text between them must
    be a form of its run (``_forms``).
    """
    found = list(_MARKER.finditer(shaped))
    cuts = [0, *[x for m in found for x in (m.start(), m.end())], len(shaped)]
    glue = [shaped[cuts[i]:cuts[i + 1]] for i in range(0, len(cuts), 2)]
    texts = [runs[int(m.group(1))].text for m in found]
    if "".join(g + t for g, t in zip(glue, texts, strict=False)) + glue[-1] == real:
        spans, offset = [], 0
        for g, t in zip(glue, texts, strict=False):
            spans.append((offset + len(g), offset + len(g) + len(t)))
            offset += len(g) + len(t)
    else:
        placed = _place(real, glue, texts)
        if placed is None:
            return None
        spans = placed
    return [_Mark(m.start(), m.end(), a, b, int(m.group(1))) for m, (a, b) in zip(found, spans, strict=True)]


def _forms(text: str) -> list[str]:
    """The forms a template may write a run of text in: as is, or escaped inside a JSON string."""
    escaped = json.dumps(text, ensure_ascii=False)[1:-1]
    return [text] if escaped == text else [text, escaped]


def _place(real: str, glue: list[str], texts: list[str]) -> list[tuple[int, int]] | None:
    """Positions of each text in ``real`` such that glue and texts alternate exactly, or None."""
    if not real.startswith(glue[0]):
        return None
    placed: list[tuple[int, int]] = []
    position = len(glue[0])
    for text, following in zip(texts, glue[1:], strict=True):
        for form in _forms(text):
            if real.startswith(form, position) and real.startswith(following, position + len(form)):
                placed.append((position, position + len(form)))
                position += len(form) + len(following)
                break
        else:
            return None
    return placed if position == len(real) else None
