"""Render one dataset record into ``(input_ids, labels)`` with loss masking.

``labels[t]`` is ``input_ids[t]`` where the model is trained to predict token ``t`` and ``-100``
where it is not (the shift by one happens in the collator). Which tokens are trained:

    format        train_on_inputs="auto"      False                      True
    general       every token                 every token (no prompt)    every token
    instruction   the completion and EOS      the completion and EOS     every token
    conversation  assistant turns             assistant turns            every token

An assistant turn is its content and end-of-turn marker, not the ``<|im_start|>assistant`` header.
A message's ``weight`` overrides this: 0 masks the whole turn, 1 trains it (an assistant turn from
its content, any other turn whole).

Conversations go through the tokenizer's chat template. Turn boundaries are found by rendering
each prefix of the conversation to text, then mapping characters to tokens with the fast
tokenizer's offsets — exact for any template that renders earlier turns the same way when later
ones are added.

Preference (DPO) records become a ``(chosen, rejected)`` pair of examples that share the prompt and
train only the final assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunery.datasets import DatasetFormat
from tunery.errors import TrainingFailed

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


class Renderer:
    """Turns records into examples for one tokenizer and one ``train_on_inputs`` setting."""

    def __init__(self, tokenizer: Any, train_on_inputs: TrainOnInputs = "auto"):
        self.tokenizer = tokenizer
        self.train_on_inputs = train_on_inputs
        self.bos: list[int] = _bos_prefix(tokenizer)
        self.eos: list[int] = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def render(self, record: dict[str, Any], fmt: DatasetFormat) -> Example:
        if fmt is DatasetFormat.GENERAL:
            return self.text(record["text"])
        if fmt is DatasetFormat.INSTRUCTION:
            return self.instruction(record["prompt"], record["completion"])
        if fmt is DatasetFormat.CONVERSATION:
            return self.conversation(record["messages"], record.get("tools"))
        raise TrainingFailed(f"supervised fine-tuning cannot train on {fmt.value} data; preference data "
                             "trains with the DPO method", user_error=True)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text(self, text: str) -> Example:
        ids = self.bos + self._encode(text) + self.eos
        return Example(ids, list(ids))

    def instruction(self, prompt: str, completion: str) -> Example:
        head = self.bos + self._encode(prompt)
        tail = self._encode(completion) + self.eos
        ids = head + tail
        if self.train_on_inputs is True:
            return Example(ids, list(ids))
        return Example(ids, [IGNORE] * len(head) + tail)

    def conversation(self, messages: Sequence[dict[str, Any]], tools: list[Any] | None = None) -> Example:
        text = self._template(messages, tools, generation_prompt=False)
        trained = bytearray(len(text))  # 1 where the character belongs to a trained span
        if self.train_on_inputs is True:
            trained[:] = b"\x01" * len(text)
        turn_start = self._prefix_length(text, messages[:0], tools, generation_prompt=False)
        for i, message in enumerate(messages):
            turn_end = self._prefix_length(text, messages[: i + 1], tools, generation_prompt=False)
            start = turn_start
            if message["role"] == "assistant":
                start = self._prefix_length(text, messages[:i], tools, generation_prompt=True)
                start = min(max(start, turn_start), turn_end)
            weight = message.get("weight")
            if weight == 0:
                trained[turn_start:turn_end] = bytes(turn_end - turn_start)
            elif weight == 1 or message["role"] == "assistant" or self.train_on_inputs is True:
                trained[start:turn_end] = b"\x01" * (turn_end - start)
            turn_start = turn_end
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [
            token if begin < len(text) and trained[begin] else IGNORE
            for token, (begin, _) in zip(ids, enc["offset_mapping"], strict=True)
        ]
        return Example(ids, labels)

    def preference(self, record: dict[str, Any]) -> tuple[Example, Example]:
        """``(chosen, rejected)``: the input conversation followed by each output, where only the
        output turn (its content and end-of-turn marker) is trained."""
        prompt = [{**m, "weight": 0} for m in record["input"]["messages"]]
        tools = record["input"].get("tools")
        replies = (record["preferred_output"][0], record["non_preferred_output"][0])
        only_replies = Renderer(self.tokenizer, False)
        chosen, rejected = (only_replies.conversation([*prompt, {**r, "weight": 1}], tools) for r in replies)
        return chosen, rejected

    def _template(self, messages: Sequence[dict[str, Any]], tools: list[Any] | None, generation_prompt: bool) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                list(messages), tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt
            )
        )

    def _prefix_length(
        self, text: str, messages: Sequence[dict[str, Any]], tools: list[Any] | None, generation_prompt: bool
    ) -> int:
        """Length of the rendering of ``messages``, checked to be a prefix of the full ``text``."""
        if not messages and not generation_prompt:
            try:
                prefix = self._template(messages, tools, generation_prompt=False)
            except Exception:  # some templates refuse an empty conversation: nothing precedes turn 0
                return 0
        else:
            prefix = self._template(messages, tools, generation_prompt)
        if not text.startswith(prefix):
            raise TrainingFailed(
                "this model's chat template renders earlier turns differently once later turns are "
                "added, so turn boundaries cannot be found for loss masking; use train_on_inputs=true "
                "or pre-tokenized Parquet data"
            )
        return len(prefix)


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
