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
  ``j-1`` when the conversation *ends* there (its end-of-turn markers, e.g. ``<|im_end|>\\n``), or,
  if that agrees further, with what it writes there before a generation prompt (gpt-oss closes the
  last turn with ``<|return|>`` but earlier ones with ``<|end|>``; Qwen1.5 closes the last turn only
  when prompted);
* the body of an assistant turn ``j`` starts how far the glue agrees with what the template writes
  after message ``j-1`` with ``add_generation_prompt`` (the header the model is prompted with), so
  everything the model has to generate itself - ``<think>`` blocks, tool calls, the end marker - is
  in the body.

Layout whitespace of different lengths in the two (templates written over several lines put a
blank line before the generation prompt that the middle of a conversation lacks) is matched as
whitespace (``_agreeing``). The anchor of a split is an occurrence of a marker that the prefix
renderings have too, so a name a later header repeats (gpt-oss writes the tool call's name into the
tool result's header) does not move the split into that header.

The last turn ends at the end of the text, less whitespace the template writes after every
conversation but not between turns. Those renderings of a prefix are cached by the shape of the
conversation and the glue text, so a dataset costs about two renders per row. Templates with
``{% generation %}`` blocks say outright which text an assistant generates; their blocks are used
for assistant bodies. A template that writes the assistant header even when no generation prompt
is asked for leaves no way to tell a turn's end from the next header by these renderings: its turns
end at the tokenizer's EOS, and a turn that EOS does not close is refused.
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

    ``render(messages, tools)`` renders what ``tokenizer.apply_chat_template(messages, tools=tools,
    tokenize=False)`` renders for the messages as Hugging Face and vLLM hand them to templates (see
    ``_renderings``). ``locate(messages, tools)`` also returns each message's turn. Both raise
    :class:`ConversationRefused` with the template's own message when it refuses.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.kwargs = dict(tokenizer.special_tokens_map)
        self._splits: dict[tuple[Any, ...], tuple[int, int, int]] = {}
        self._always_prompts: dict[str, bool] = {}
        self._prompts: dict[str, str] = {}

    def generation_prompt(self, template: str) -> str:
        """What the template adds after a one-message conversation when asked for a generation
        prompt (the assistant header, for most); cached per template."""
        if template not in self._prompts:
            self._prompts[template] = _generation_prompt(template, self.kwargs)
        return self._prompts[template]

    def source(self, tools: Sequence[Any] | None) -> str:
        try:
            return str(self.tokenizer.get_chat_template(None, list(tools) if tools else None))
        except ValueError as error:  # no chat template at all
            raise ConversationRefused(f"the model has no chat template to render conversations with ({error})") \
                from None

    def render(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None) -> str:
        attempts = _Attempts()
        for real, prepared in self._renderings(messages, tools, attempts):
            if all(_calls_in(real, message) for message in prepared):
                return real
            attempts.without_calls = True
        raise attempts.refusal(messages)

    def locate(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None,
               needed: Sequence[int] | None = None) -> RenderedChat:
        """Render ``messages`` and find the turns of the messages in ``needed`` (default: all).

        Turns of the others are left empty (``Turn(0, 0, 0)``): each located boundary may cost two
        renders of a prefix (cached across conversations of the same shape).
        """
        wanted = list(range(len(messages))) if needed is None else list(needed)
        attempts = _Attempts()
        for real, prepared in self._renderings(messages, tools, attempts):
            chat = self._locate(real, prepared, tools, wanted)
            if not any((i, "tool_calls") in chat.dropped for i in wanted):
                return chat
            attempts.without_calls = True
        raise attempts.refusal(messages)

    def _locate(self, real: str, prepared: list[dict[str, Any]], tools: Sequence[Any] | None,
                wanted: list[int]) -> RenderedChat:
        template = self.source(tools)
        if template not in self._always_prompts:
            self._always_prompts[template] = _always_prompts(template, self.kwargs)
        stop = self.tokenizer.eos_token if self._always_prompts[template] else None
        if self._always_prompts[template] and not stop:
            raise _always_prompting()
        skeleton = _skeleton(prepared)
        shaped = _render_shaped(template, skeleton.messages, tools, False, self.kwargs)
        marks = _align(shaped, real, skeleton.runs)
        if marks is None:
            raise ConversationRefused(
                "the chat template rewrites message text in a way tunery cannot trace back to the "
                "messages, so the trained tokens cannot be located exactly; set train_on_inputs=true "
                "or upload pre-tokenized Parquet with your own labels")
        seen = {(skeleton.runs[mark.run].message, skeleton.runs[mark.run].key) for mark in marks}
        dropped = frozenset((run.message, run.key) for run in skeleton.runs) - seen
        # Each tool call of a message must be rendered (gpt-oss renders only the first of several).
        shown = {mark.run for mark in marks}
        dropped |= {(run.message, run.key) for k, run in enumerate(skeleton.runs)
                    if run.key == "tool_calls" and k not in shown}
        boundaries = _Boundaries(self, template, skeleton, shaped, marks, len(real), tools, stop)
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

    def _renderings(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None,
                    attempts: _Attempts) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """Real renderings of the conversation, each with the messages it was rendered from.

        Templates disagree on how a message without text looks, so the messages are offered as
        Hugging Face and vLLM hand them over (None values dropped, JSON-string tool arguments
        parsed into objects), then with empty content on tool-calling messages (Qwen3's template
        fails on missing content), then as written (DeepSeek-R1's concatenates argument strings
        and tests ``content is none``). Callers take the first rendering that renders every tool
        call; the first refusal is kept in ``attempts``.
        """
        template = self.source(tools)
        tried: list[list[dict[str, Any]]] = []
        for prepared in _variants(messages):
            if prepared in tried:
                continue
            tried.append(prepared)
            try:
                real = _render(template, prepared, tools, False, self.kwargs)
            except ConversationRefused as error:
                attempts.first_error = attempts.first_error or error
                continue
            yield real, prepared

    def cached_split(self, key: tuple[Any, ...],
                     compute: Callable[[], tuple[int, int, int]]) -> tuple[int, int, int]:
        found = self._splits.get(key)
        if found is None:
            found = self._splits[key] = compute()
        return found


@dataclass
class _Attempts:
    """How the renderings of one conversation went, for the refusal when none would do."""

    first_error: ConversationRefused | None = None
    without_calls: bool = False  # a rendering worked but left tool calls out

    def refusal(self, messages: Sequence[Mapping[str, Any]]) -> ConversationRefused:
        if self.first_error is not None and not self.without_calls:
            return self.first_error
        calls = next(i for i, m in enumerate(messages) if m.get("tool_calls"))
        return ConversationRefused(f"the chat template leaves out the tool calls of messages[{calls}], so they "
                                   "cannot be trained")


class _Boundaries:
    """Cut points between consecutive turns, as offsets in the real text, computed on demand."""

    def __init__(self, owner: ChatTemplate, template: str, skeleton: _Skeleton, shaped: str,
                 marks: list[_Mark], real_length: int, tools: Sequence[Any] | None, stop: str | None = None):
        self.owner, self.template, self.skeleton, self.shaped = owner, template, skeleton, shaped
        self.marks, self.real_length, self.tools = marks, real_length, tools
        # For a template that always writes the assistant header (see _always_prompts), the text
        # after a turn ends it with the header in it: turns end at the first EOS instead.
        self.stop = stop
        self._ends = [mark.shaped_end for mark in marks]  # increasing: occurrences do not overlap
        self._splits: dict[int, tuple[int, int]] = {}
        self._shape = tuple((m.get("role"), bool(m.get("tool_calls")), _kind(m.get("content")))
                            for m in skeleton.messages)
        # first_text[j]: where the first text of any message >= j is in the skeleton rendering.
        count = len(skeleton.messages)
        first_text = [len(shaped)] * (count + 1)
        for mark in marks:
            message = skeleton.runs[mark.run].message
            first_text[message] = min(first_text[message], mark.shaped_start)
        for j in range(count - 1, -1, -1):
            first_text[j] = min(first_text[j], first_text[j + 1])
        self._first_text = first_text

    def cut(self, j: int) -> int:
        """Where turn j starts (= where turn j-1 ends); for j past the last message, where the last
        turn ends."""
        if j <= 0:
            return 0
        if j >= len(self.skeleton.messages):
            return self._last_end()
        return self._split(j)[0]

    def _last_end(self) -> int:
        """The end of the last turn: the text after its last text, up to the end, less trailing
        whitespace that the template does not also write when another message follows.

        Everything the template writes after the last message closes it (Phi-3's final
        ``<|endoftext|>`` included), except whitespace a template leaves at its very end (the
        newline after the loop of widely copied Llama 3 templates): the model never writes that.
        Whitespace that is part of the turn's own closing (Gemma's ``<end_of_turn>\\n``) stays, as
        a rendering with one more message shows.
        """
        anchor = self.marks[-1] if self.marks else None
        start = anchor.shaped_end if anchor is not None else 0
        tail = self.shaped[start:]
        if self.stop is not None:
            return self._to_real(start + _through(tail, self.stop))
        kept = len(tail.rstrip())
        if kept == len(tail):
            return self.real_length
        last = self.skeleton.messages[-1]
        follower = {"role": "user" if last.get("role") == "assistant" else "assistant", "content": "x"}
        key = (self.template, bool(self.tools), self._shape, "last", tail)

        def compute() -> tuple[int, int, int]:
            try:
                longer = _render_shaped(self.template, [*self.skeleton.messages, follower], self.tools, False,
                                        self.owner.kwargs)
            except ConversationRefused:
                return 0, len(tail), 0
            marker = "" if anchor is None else f"{MARK_OPEN}{anchor.run}{MARK_CLOSE}"
            at = longer.rfind(marker) + len(marker) if marker in longer else -1
            return 0, len(tail) if at < 0 else _common_prefix(longer[at:], tail), 0

        _, closing, _ = self.owner.cached_split(key, compute)
        return self._to_real(start + max(kept, closing))

    def body(self, j: int) -> int:
        """Where the generated part of assistant turn j starts."""
        return self._split(j)[1] if j > 0 else 0

    def _split(self, j: int) -> tuple[int, int]:
        """(end of turn j-1, start of the body of turn j), as offsets in the real text.

        The glue is split after the last marker before message j's text, the *anchor*; if the
        template leaves that occurrence out when the conversation stops before j (Gemma 3 writes the
        system prompt into the first user turn, so without a user turn it writes no system prompt;
        gpt-oss repeats a tool call's name in the header of the tool result after it), an earlier
        anchor is taken, down to the start of the text.
        """
        if j in self._splits:
            return self._splits[j]
        first_later = self._first_text[j]
        anchors = self.marks[:bisect.bisect_right(self._ends, first_later)][::-1]
        nearest = anchors[0].shaped_end if anchors else 0
        key = (self.template, bool(self.tools), self._shape, j, self.shaped[nearest:first_later])

        def compute() -> tuple[int, int, int]:
            ends, starts = (self._prefix(j, generation_prompt) for generation_prompt in (False, True))
            prompt = self.owner.generation_prompt(self.template)
            for depth, anchor in enumerate([*anchors, None]):
                marker = "" if anchor is None else f"{MARK_OPEN}{anchor.run}{MARK_CLOSE}"
                # The same occurrence in the prefix renderings: the last one there is the anchor's.
                if anchor is None or ends.count(marker) == self.shaped.count(marker, 0, anchor.shaped_end):
                    glue = self.shaped[anchor.shaped_end if anchor else 0:first_later]
                    prompted = _after(starts, marker)
                    closing = _closing_before(prompted, prompt, glue, self.skeleton.messages[j].get("role"))
                    end = _outside_markers(glue, max(_agreeing(_after(ends, marker), glue), _agreeing(closing, glue)))
                    body = _outside_markers(glue, _agreeing(prompted, glue))
                    if self.stop is not None:
                        end = min(end, _through(glue, self.stop))
                    return depth, end, max(end, body)
            raise AssertionError("the empty marker is in every text")

        depth, end, body = self.owner.cached_split(key, compute)
        glue_start = anchors[depth].shaped_end if depth < len(anchors) else 0
        self._splits[j] = (self._to_real(glue_start + end), self._to_real(glue_start + body))
        return self._splits[j]

    def _prefix(self, j: int, generation_prompt: bool) -> str:
        """The skeleton rendering of the conversation stopped before message j."""
        try:
            return _render_shaped(self.template, self.skeleton.messages[:j], self.tools, generation_prompt,
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


def _closing_before(prompted: str, prompt: str, glue: str, next_role: Any) -> str:
    """What a template writes after a message before its generation prompt (``prompted`` less the
    prompt), where that can be told: when the prompt ends it, or when all of it is in glue that
    leads to another role than the assistant (so no assistant header is in it)."""
    if prompt and prompted.endswith(prompt):
        return prompted[:-len(prompt)]
    return prompted if next_role != "assistant" and glue.startswith(prompted) else ""


def _generation_prompt(template: str, kwargs: dict[str, Any]) -> str:
    """The text the generation prompt adds after a one-user-message conversation, or "" when it
    adds nothing or rewrites what came before."""
    user = [{"role": "user", "content": f"{MARK_OPEN}0{MARK_CLOSE}"}]
    try:
        plain, prompted = (_render_shaped(template, user, None, flag, kwargs) for flag in (False, True))
    except ConversationRefused:
        return ""
    return prompted[len(plain):] if prompted.startswith(plain) else ""


def _outside_markers(glue: str, length: int) -> int:
    """``length`` moved back to the start of a marker it would end inside."""
    opened = glue.rfind(MARK_OPEN, 0, length)
    return opened if opened > glue.rfind(MARK_CLOSE, 0, length) else length


def _always_prompts(template: str, kwargs: dict[str, Any]) -> bool:
    """Whether the template writes the assistant header after every conversation, asked or not
    (Meta-Llama-3-8B-Instruct's first template did; Command R7B's tool-use template does): the
    generation prompt changes nothing, conversations ending with a user message and with an answer
    end with the same text, which is also between a user message and its answer, and an answer
    followed by another user message is not followed by that text."""
    marker = [f"{MARK_OPEN}{i}{MARK_CLOSE}" for i in range(3)]
    user = [{"role": "user", "content": marker[0]}]
    answered = [*user, {"role": "assistant", "content": marker[1]}]
    try:
        alone, prompted, both, more = (
            _render_shaped(template, messages, None, prompt, kwargs)
            for messages, prompt in ((user, False), (user, True), (answered, False),
                                     ([*answered, {"role": "user", "content": marker[2]}], False)))
    except ConversationRefused:
        return False
    after_user, after_answer = alone.rpartition(MARK_CLOSE)[2], both.rpartition(MARK_CLOSE)[2]
    shared = after_user[len(after_user) - _common_prefix(after_user[::-1], after_answer[::-1]):]
    to_answer = both.partition(marker[0])[2].partition(marker[1])[0]
    answer_to_user = more.partition(marker[1])[2].partition(marker[2])[0]
    return (alone == prompted and bool(shared.strip()) and shared in to_answer
            and not answer_to_user.startswith(after_answer))


def _always_prompting() -> ConversationRefused:
    return ConversationRefused(
        "the chat template appends the assistant prompt even when no generation prompt is asked for, and the "
        "tokenizer's EOS token does not close its turns, so where an assistant turn ends cannot be told from the "
        "header after it; wrap that prompt in {% if add_generation_prompt %} in the template, or set "
        "train_on_inputs=true")


def _through(text: str, stop: str) -> int:
    """Where ``text`` ends when cut after its first ``stop``."""
    at = text.find(stop)
    if at < 0:
        raise _always_prompting()
    return at + len(stop)


def _agreeing(text: str, glue: str) -> int:
    """How far ``glue`` agrees with ``text``, the template's rendering after a conversation cut
    short: character by character, except that a whitespace run with more of ``text`` after it
    matches the whole whitespace run of the glue there, and whitespace on one side only is skipped
    when the same word follows it on both (so a content's own leading space, which is glue just
    before the content, is not skipped). Templates put layout whitespace of
    different lengths at a conversation's end and between its turns: cut short, a community Gemma
    template writes ``<end_of_turn>\\n\\n\\n    <start_of_turn>model\\n`` for the middle's
    ``<end_of_turn>\\n\\n    <start_of_turn>model\\n``, Hermes 2 Pro ``</tool_response><|im_end|>`` for
    ``</tool_response>\\n<|im_end|>``."""
    i = j = 0
    while i < len(text) and j < len(glue):
        if text[i].isspace() or glue[j].isspace():
            run_i, run_j = _run_end(text, i), _run_end(glue, j)
            if run_i == len(text):  # trailing whitespace: as far as it agrees
                return j + _common_prefix(text[i:], glue[j:run_j])
            word = text[run_i:].split(None, 1)[0]  # text goes on after the run, so there is one
            if (run_i == i or run_j == j) and not glue.startswith(word, run_j):
                break  # whitespace on one side only, not followed by the same word on both
            i, j = run_i, run_j
        elif text[i] == glue[j]:
            i, j = i + 1, j + 1
        else:
            break
    return j


def _run_end(text: str, start: int) -> int:
    end = start
    while end < len(text) and text[end].isspace():
        end += 1
    return end


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


def _skeleton(messages: list[dict[str, Any]]) -> _Skeleton:
    runs: list[_Run] = []

    def shape(text: str, owner: int, key: str) -> str:
        if MARK_OPEN in text or MARK_CLOSE in text:
            raise ConversationRefused("the conversation contains U+FDD0 or U+FDD1, Unicode noncharacters that "
                                      "tunery reserves to locate turns; remove them")
        pieces = _TAG.split(text) if "<" in text else (text,)
        return "".join(piece if not piece or (piece[0] == "<" and _TAG.fullmatch(piece)) else word(piece, owner, key)
                       for piece in pieces)

    def word(piece: str, owner: int, key: str) -> str:
        """The piece with its words (all but the whitespace at its edges) as one marker."""
        core = piece.strip()
        if not core:
            return piece
        runs.append(_Run(owner, key, core))
        start = len(piece) - len(piece.lstrip())
        return f"{piece[:start]}{MARK_OPEN}{len(runs) - 1}{MARK_CLOSE}{piece[start + len(core):]}"

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


def _render_shaped(template: str, messages: list[dict[str, Any]], tools: Sequence[Any] | None,
                   generation_prompt: bool, kwargs: dict[str, Any]) -> str:
    """A skeleton rendering, straight through the template ``apply_chat_template`` compiles (the
    messages are plain JSON already, so its defensive copy is skipped). Exactness does not rest
    on it: a skeleton rendering that differs from the real one fails ``_align``."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    aliased = [_with_reasoning_aliases(m) for m in messages]
    try:
        return str(_compile_jinja_template(template).render(
            messages=aliased, tools=list(tools) if tools else None, documents=None,
            add_generation_prompt=generation_prompt, **kwargs))
    except Exception as error:  # noqa: BLE001 - whatever a template raises is its verdict on the data
        raise ConversationRefused(f"the chat template refuses this conversation: {_template_message(error)}") \
            from None


def _with_reasoning_aliases(message: dict[str, Any]) -> dict[str, Any]:
    """Reasoning under every name templates read, as ``apply_chat_template`` passes it."""
    reasoning = next((message[key] for key in ("reasoning_content", "thinking", "reasoning")
                      if message.get(key) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


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
    placed = _place(real, glue, [runs[int(m.group(1))].text for m in found])
    if placed is None:
        return None
    return [_Mark(m.start(), m.end(), a, b, int(m.group(1))) for m, (a, b) in zip(found, placed, strict=True)]


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
