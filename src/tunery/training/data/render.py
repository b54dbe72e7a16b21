"""Render one dataset record into ``(input_ids, labels)`` with loss masking.

``labels[t]`` is ``input_ids[t]`` where the model is trained to predict token ``t`` and ``-100``
where it is not (the shift by one happens in the collator). Which tokens are trained:

    format        train_on_inputs="auto"      False                      True
    general       every token                 every token (no prompt)    every token
    instruction   the completion and EOS      the completion and EOS     every token
    conversation  assistant turns             assistant turns            every token

An assistant turn is what the model generates after its role header, as the chat template renders
it: its content, reasoning and tool calls, and the end-of-turn marker(s) the template closes it
with (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, EOS ...). Where a template moves, rewrites
or drops text (Mistral v0.3's system prompt, Qwen3's earlier ``<think>`` blocks), what it renders
is what is trained: that is what the model sees at inference. ``chat.py`` locates the turns.

A message's ``weight`` overrides this: 0 masks the whole turn, 1 trains it (an assistant turn from
its body, any other turn whole, header included). A conversation whose assistant messages carry
``reasoning`` (or ``reasoning_content``) trains only its final assistant turn unless weights say
otherwise - Together's documented default for reasoning data, and the right one for templates that
drop earlier reasoning. A template that refuses a conversation, or drops the text of a turn that
would be trained (the final reasoning, say), raises :class:`ConversationRefused`.

Preference (DPO) records become a ``(chosen, rejected)`` pair of examples that share the prompt and
train only the final assistant turn.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunery.datasets import DatasetFormat
from tunery.datasets.legacy_functions import as_tools
from tunery.errors import TrainingFailed
from tunery.training.data.chat import REASONING_KEYS, ChatTemplate, ConversationRefused

IGNORE = -100
TrainOnInputs = bool | Literal["auto"]


@dataclass(frozen=True, slots=True)
class ExampleImage:
    """An image of a sample: its file, decoded again for each batch (compressed bytes keep a
    dataset of images small), and the image tokens that stand for it, ``input_ids[start:end]``."""

    data: bytes
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    images: tuple[ExampleImage, ...] = ()  # in token order; see images.py

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        """Tokens whose prediction is trained; token 0 is never predicted."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)


@dataclass(frozen=True, slots=True)
class Marked:
    """An example with the text it was tokenized from and each token's ``[start, end)`` in it,
    so a user can see which text is trained (previews, ``tunery files check --model``)."""

    example: Example
    text: str
    offsets: list[tuple[int, int]]

    def cut(self, max_length: int) -> tuple[Marked, bool]:
        """The first ``max_length`` tokens and their text; whether anything was cut."""
        example, cut = truncate(self.example, max_length)
        if not cut:
            return self, False
        offsets = self.offsets[:max_length]
        end = max((e for _, e in offsets), default=0)
        return Marked(example, self.text[:end], offsets), True

    def segments(self) -> list[tuple[str, bool]]:
        """The text in consecutive pieces, each trained or not (a token's text is trained with it)."""
        pieces: list[tuple[str, bool]] = []
        position = 0
        for (_, end), label in zip(self.offsets, self.example.labels, strict=True):
            trained = label != IGNORE
            if end <= position:
                continue
            text = self.text[position:end]
            if pieces and pieces[-1][1] == trained:
                pieces[-1] = (pieces[-1][0] + text, trained)
            else:
                pieces.append((text, trained))
            position = end
        if position < len(self.text):
            pieces.append((self.text[position:], False))
        return pieces


class Renderer:
    """Turns records into examples for one tokenizer and one ``train_on_inputs`` setting."""

    def __init__(self, tokenizer: Any, train_on_inputs: TrainOnInputs = "auto"):
        self.tokenizer = tokenizer
        self.train_on_inputs = train_on_inputs
        self.bos: list[int] = _bos_prefix(tokenizer)
        self.eos: list[int] = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.chat = ChatTemplate(tokenizer)

    def render(self, record: dict[str, Any], fmt: DatasetFormat) -> Example:
        return self.marked(record, fmt).example

    def marked(self, record: dict[str, Any], fmt: DatasetFormat) -> Marked:
        """The example, with the text it was tokenized from and its tokens' offsets."""
        if fmt is DatasetFormat.CONVERSATION:
            return self.marked_conversation(*as_tools(record["messages"], record.get("tools"), record.get("functions")))
        if fmt is DatasetFormat.GENERAL:
            return self._marked_pieces([(record["text"], True)])
        if fmt is DatasetFormat.INSTRUCTION:
            return self._marked_pieces([(record["prompt"], self.train_on_inputs is True), (record["completion"], True)])
        raise TrainingFailed(f"supervised fine-tuning cannot train on {fmt.value} data; preference data "
                             "trains with the DPO method", user_error=True)

    def _marked_pieces(self, pieces: list[tuple[str, bool]]) -> Marked:
        """BOS, each piece tokenized on its own, EOS; BOS trains with the first piece, EOS with the last."""
        bos = self.tokenizer.convert_ids_to_tokens(self.bos) if self.bos else []
        text = "".join(bos)
        ids, offsets = list(self.bos), [(0, len(text))] * len(self.bos)
        labels = list(self.bos) if pieces[0][1] else [IGNORE] * len(self.bos)
        for piece, trained in pieces:
            piece_ids, piece_offsets = self._tokenize(piece)
            ids += piece_ids
            labels += piece_ids if trained else [IGNORE] * len(piece_ids)
            offsets += [(len(text) + a, len(text) + b) for a, b in piece_offsets]
            text += piece
        if self.eos:
            eos = self.tokenizer.convert_ids_to_tokens(self.eos)[0]
            ids += self.eos
            labels += self.eos if pieces[-1][1] else [IGNORE]
            offsets.append((len(text), len(text) + len(eos)))
            text += eos
        return Marked(Example(ids, labels), text, offsets)

    def text(self, text: str) -> Example:
        return self._marked_pieces([(text, True)]).example

    def instruction(self, prompt: str, completion: str) -> Example:
        return self._marked_pieces([(prompt, self.train_on_inputs is True), (completion, True)]).example

    def conversation(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None) -> Example:
        return self.marked_conversation(messages, tools).example

    def marked_conversation(self, messages: Sequence[Mapping[str, Any]],
                            tools: Sequence[Any] | None = None) -> Marked:
        """The conversation's example, with its rendered text and token offsets (for previews)."""
        plan = _plan(messages, self.train_on_inputs)
        if not plan.needed:
            text = self.chat.render(messages, tools)
            spans = [(0, len(text))] if plan.everything else []
        else:
            rendered = self.chat.locate(messages, tools, plan.needed)
            _refuse_dropped(rendered.dropped, plan, messages)
            text = rendered.text
            spans = plan.spans([(t.start, t.body, t.end) for t in rendered.turns], len(text))
        ids, offsets = self._tokenize(text)
        return Marked(Example(ids, _labels(ids, offsets, spans)), text, offsets)

    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None and hasattr(backend, "encode"):
            encoding = backend.encode(text, add_special_tokens=False)
            return encoding.ids, encoding.offsets
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def preference(self, record: dict[str, Any]) -> tuple[Example, Example]:
        """``(chosen, rejected)``: the input conversation followed by each output, where only the
        output turn (its content, reasoning or tool calls, and end-of-turn marker) is trained."""
        chosen, rejected = self.marked_preference(record)
        return chosen.example, rejected.example

    def marked_preference(self, record: dict[str, Any]) -> tuple[Marked, Marked]:
        messages, tools = as_tools(record["input"]["messages"], record["input"].get("tools"))
        prompt = [{**m, "weight": 0} for m in messages]
        only_replies = Renderer(self.tokenizer, False)
        only_replies.chat = self.chat  # share the template's caches
        chosen, rejected = (only_replies.marked_conversation([*prompt, {**output[0], "weight": 1}], tools)
                            for output in (record["preferred_output"], record["non_preferred_output"]))
        return chosen, rejected


@dataclass(frozen=True)
class _Plan:
    """Which turns of a conversation are trained, decided from roles, weights and reasoning."""

    everything: bool  # train_on_inputs=True: all text except the masked turns
    trained: tuple[tuple[int, bool], ...]  # (message, whole turn?) trained when not everything
    masked: tuple[int, ...]  # messages with weight 0 when everything is trained
    final_assistant: int | None

    @property
    def needed(self) -> list[int]:
        return sorted({i for i, _ in self.trained} | set(self.masked))

    def spans(self, turns: list[tuple[int, int, int]], length: int) -> list[tuple[int, int]]:
        if self.everything:
            kept, position = [], 0
            for i in self.masked:
                start, _, end = turns[i]
                kept.append((position, start))
                position = max(position, end)
            return [*kept, (position, length)]
        return [(turns[i][0] if whole else turns[i][1], turns[i][2]) for i, whole in self.trained]


def _plan(messages: Sequence[Mapping[str, Any]], train_on_inputs: TrainOnInputs) -> _Plan:
    assistants = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    final = assistants[-1] if assistants else None
    if train_on_inputs is True:
        masked = tuple(i for i, m in enumerate(messages) if m.get("weight") == 0)
        return _Plan(True, (), masked, final)
    reasoning = any(messages[i].get(key) for i in assistants for key in REASONING_KEYS)
    trained = []
    for i, message in enumerate(messages):
        weight = message.get("weight")
        is_assistant = message.get("role") == "assistant"
        if weight == 1 or (weight is None and is_assistant and (not reasoning or i == final)):
            trained.append((i, not is_assistant))
    return _Plan(False, tuple(trained), (), final)


def _refuse_dropped(dropped: frozenset[tuple[int, str]], plan: _Plan,
                    messages: Sequence[Mapping[str, Any]]) -> None:
    """A trained assistant turn whose content the template leaves out, or a final assistant turn
    whose reasoning it leaves out, would silently train something else: refuse it."""
    for i, _ in plan.trained if not plan.everything else ():
        if messages[i].get("role") != "assistant":
            continue
        if (i, "content") in dropped:
            raise ConversationRefused(f"the chat template does not render the content of messages[{i}], "
                                      "so that assistant turn cannot be trained")
        if i == plan.final_assistant and any((i, key) in dropped for key in REASONING_KEYS):
            raise ConversationRefused(
                f"the chat template does not render the reasoning of messages[{i}] (it reads none of "
                f"{', '.join(REASONING_KEYS)}, or leaves it out of this turn), so the reasoning would not be "
                "trained; use a model whose template renders reasoning, or drop the reasoning field")


def _labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """A token is trained when it overlaps a trained span, except one that runs past a span's end:
    where a template's end marker and the next header agree for a few characters (Phi-3's
    ``<|end|>\\n`` then ``<|endoftext|>`` or ``<|user|>``), the span ends inside the next token."""
    labels = [IGNORE] * len(ids)
    if not ids:
        return labels
    starts, ends = zip(*offsets, strict=True)
    for start, end in spans:
        k = bisect.bisect_right(starts, end) - 1
        if k >= 0 and starts[k] < end < ends[k]:
            end = starts[k]
        first, stop = bisect.bisect_right(ends, start), bisect.bisect_left(starts, end)
        labels[first:stop] = ids[first:stop]
    return labels


def _bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos]`` if this tokenizer starts plain text with BOS (as Llama's does), else ``[]``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def from_pretokenized(row: dict[str, Any]) -> list[Example]:
    """Examples from one pre-tokenized Parquet row, used as given.

    Positions with ``attention_mask`` 0 are padding and are dropped (tunery batches for itself);
    missing ``labels`` mean every token is trained; a row whose ``position_ids`` restart at 0 is
    already packed and is split back into its samples.
    """
    ids = list(row["input_ids"])
    labels = list(row["labels"]) if row.get("labels") is not None else list(ids)
    positions = row.get("position_ids")
    keep = row.get("attention_mask")
    index = [t for t in range(len(ids)) if keep is None or keep[t]]
    examples: list[Example] = []
    current: list[int] = []
    for t in index:
        if current and positions is not None and positions[t] == 0:
            examples.append(Example([ids[i] for i in current], [labels[i] for i in current]))
            current = []
        current.append(t)
    if current:
        examples.append(Example([ids[i] for i in current], [labels[i] for i in current]))
    return examples


def truncate(example: Example, max_length: int) -> tuple[Example, bool]:
    """Keep the first ``max_length`` tokens; say whether anything was cut. An image is kept whole or
    not at all: a cut through its tokens moves to before them (the model needs all of an image's
    tokens or none)."""
    if len(example) <= max_length:
        return example, False
    cut = max_length
    for image in example.images:
        if image.end > cut:
            cut = min(cut, image.start)
    images = tuple(image for image in example.images if image.end <= cut)
    return Example(example.input_ids[:cut], example.labels[:cut], images), True
