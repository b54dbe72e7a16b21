"""Samples with images: the model's processor puts image tokens in the sequence and pixels in the batch.

Rendering (``VisionRenderer``) is the text ``Renderer``'s, plus one step. A sample's image parts
(``{"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}``, checked at upload by
``tunery.datasets``) become transformers' ``{"type": "image"}`` parts, which the chat template
renders as the model's image placeholder (LLaVA's ``<image>``, Qwen2-VL's ``<|image_pad|>``, …).
The text renderer masks that text as usual; then the processor expands each placeholder into the
tokens the model needs for that image (LLaVA: one per patch; others depend on the image's size) and
reports where in the text each expansion went. Every text token keeps the text renderer's label;
image tokens are never trained. Each image's file and token span ride along in ``Example.images``,
so packing keeps a sample's images with its tokens and truncation keeps an image whole or drops it.

Collating (``ImageEncoder``) runs the batch's images, in token order across its rows, through the
same processor: ``pixel_values`` (and whatever else the model's image processor returns, such as
``image_sizes``) for the forward pass, where the model puts each image's features at its tokens.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

from tunery.datasets import DatasetFormat
from tunery.datasets.images import ImageInvalid, image_bytes, open_image
from tunery.errors import TrainingFailed
from tunery.models.architecture import vision_refusal
from tunery.models.processor import content_as_parts, renders_string_content
from tunery.training.data.chat import ConversationRefused
from tunery.training.data.render import IGNORE, Example, ExampleImage, Marked, Renderer, TrainOnInputs


def split_images(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The messages with each ``image_url`` part as an ``{"type": "image"}`` part, and the URLs in order."""
    out: list[dict[str, Any]] = []
    urls: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
            parts = []
            for part in content:
                if part.get("type") == "image_url":
                    urls.append(part["image_url"]["url"])
                    parts.append({"type": "image"})
                else:
                    parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    return out, urls


class VisionRenderer:
    """A ``Renderer`` for a vision-language model: the same examples, with image tokens and images."""

    def __init__(self, text: Renderer, processor: Any):
        self.text = text
        self.processor = processor
        self.tokenizer = text.tokenizer
        self.as_parts = not renders_string_content(text.tokenizer)

    @property
    def train_on_inputs(self) -> TrainOnInputs:
        return self.text.train_on_inputs

    def render(self, record: dict[str, Any], fmt: DatasetFormat) -> Example:
        return self.marked(record, fmt).example

    def marked(self, record: dict[str, Any], fmt: DatasetFormat) -> Marked:
        if fmt is not DatasetFormat.CONVERSATION:
            return self.text.marked(record, fmt)
        messages, urls = split_images(self._contents(record["messages"]))
        marked = self.text.marked({**record, "messages": messages}, fmt)
        return self._expand(marked, urls) if urls else marked

    def preference(self, record: dict[str, Any]) -> tuple[Example, Example]:
        chosen, rejected = self.marked_preference(record)
        return chosen.example, rejected.example

    def marked_preference(self, record: dict[str, Any]) -> tuple[Marked, Marked]:
        """As ``Renderer.marked_preference``; the prompt's images are in both sequences."""
        messages, urls = split_images(self._contents(record["input"]["messages"]))
        outputs = {key: self._contents(record[key]) for key in ("preferred_output", "non_preferred_output")}
        chosen, rejected = self.text.marked_preference({**record, **outputs,
                                                        "input": {**record["input"], "messages": messages}})
        return (self._expand(chosen, urls), self._expand(rejected, urls)) if urls else (chosen, rejected)

    def _contents(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Text contents as a text part, for templates that render parts only (SmolVLM's, Idefics3's)."""
        return content_as_parts(messages) if self.as_parts else list(messages)

    def _expand(self, marked: Marked, urls: list[str]) -> Marked:
        """``marked`` with each image placeholder expanded into the processor's image tokens, labelled
        ``IGNORE``; the text is the expanded text the tokens come from. Where the processor reports where
        it put each expansion (``text_replacement_offsets``), tokens are mapped through those offsets;
        otherwise each placeholder token is replaced by the tokens the processor makes of it alone, which
        must give exactly what it makes of the whole text."""
        placeholders = marked.text.count(self.processor.image_token)
        if placeholders != len(urls):
            raise ConversationRefused(self._misplaced(placeholders, len(urls)))
        files = [_image_file(url, i) for i, url in enumerate(urls)]
        images = [open_image(f) for f in files]
        expanded = self.processor(text=[marked.text], images=[images], add_special_tokens=False,
                                  return_offsets_mapping=True, return_text_replacement_offsets=True)
        replaced = [r for r in (expanded.get("text_replacement_offsets") or [[]])[0] if r["type"] == "image"]
        if not replaced or "offset_mapping" not in expanded:
            return self._splice(marked, files, images, list(expanded["input_ids"][0]))
        if len(replaced) != len(files):
            raise ConversationRefused(self._misplaced(len(replaced), len(files)))
        text, position = [], 0
        for r in replaced:
            text += [marked.text[position : r["span"][0]], r["replacement"]]
            position = r["span"][1]
        offsets = [(int(a), int(b)) for a, b in expanded["offset_mapping"][0]]
        example = _relabel(marked.example, marked.offsets, list(expanded["input_ids"][0]), offsets,
                           [(r["span"], r["new_span"]) for r in replaced], files)
        return Marked(example, "".join(text) + marked.text[position:], offsets)

    def _splice(self, marked: Marked, files: list[bytes], images: list[Any], whole: list[int]) -> Marked:
        """``marked`` with the ``k``-th placeholder token replaced by the processor's tokens for image
        ``k`` alone, checked against ``whole`` (the processor's tokens for the whole text)."""
        placeholder = self.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        at = [t for t, token in enumerate(marked.example.input_ids) if token == placeholder]
        if len(at) != len(files):
            raise ConversationRefused(self._misplaced(len(at), len(files)))
        alone = self.processor(text=[self.processor.image_token] * len(images), images=[[i] for i in images],
                               add_special_tokens=False)["input_ids"]
        plain, text = marked.example, marked.text
        ids: list[int] = []
        labels: list[int] = []
        offsets: list[tuple[int, int]] = []
        spans: list[tuple[int, int]] = []
        pieces: list[str] = []
        taken, char, position = 0, 0, 0  # tokens of ``plain`` taken; characters of its text and of the new one
        for t, expansion in [*zip(at, alone, strict=True), (len(plain.input_ids), [])]:
            end = marked.offsets[t][0] if t < len(plain.input_ids) else len(text)
            shift = position - char
            ids += plain.input_ids[taken:t]
            labels += plain.labels[taken:t]
            offsets += [(a + shift, b + shift) for a, b in marked.offsets[taken:t]]
            pieces.append(text[char:end])
            position += end - char
            if t == len(plain.input_ids):
                break
            spans.append((len(ids), len(ids) + len(expansion)))
            for token in expansion:
                piece = self.tokenizer.decode([token])
                pieces.append(piece)
                offsets.append((position, position + len(piece)))
                position += len(piece)
            ids += list(expansion)
            labels += [IGNORE] * len(expansion)
            taken, char = t + 1, marked.offsets[t][1]
        if ids != whole:
            raise ConversationRefused("the model's processor tokenizes the text around an image differently from its "
                                      "tokenizer, so the trained tokens cannot be found")
        kept = tuple(ExampleImage(data, a, b) for data, (a, b) in zip(files, spans, strict=True))
        return Marked(Example(ids, labels, kept), "".join(pieces), offsets)

    def _misplaced(self, placed: int, wanted: int) -> str:
        return (f"the model's chat template rendered {placed} image placeholders for the sample's {wanted} images: "
                f"it must render each image part as {self.processor.image_token!r}")


def _image_file(url: str, index: int) -> bytes:
    try:
        data = image_bytes(url)
        open_image(data)
    except ImageInvalid as exc:
        raise ConversationRefused(f"image {index + 1} of the sample {exc.problem}; got {exc.value}") from None
    return data


def _relabel(example: Example, plain_offsets: Sequence[tuple[int, int]], ids: list[int],
             offsets: Sequence[tuple[int, int]], spans: list[tuple[tuple[int, int], tuple[int, int]]],
             files: list[bytes]) -> Example:
    """Labels for the expanded ``ids``: a token inside image ``k``'s expansion (``spans[k][1]``, in
    characters of the expanded text) is image ``k``'s and untrained; any other token is the text
    token that starts at the same place in the unexpanded text, and takes its label."""
    text_token_at = {begin: i for i, (begin, _) in enumerate(plain_offsets)}
    labels: list[int] = []
    bounds: list[list[int]] = [[len(ids), 0] for _ in spans]
    k, shift = 0, 0  # the next image; how far the expansions so far moved the text
    for t, (token, (begin, _)) in enumerate(zip(ids, offsets, strict=True)):
        while k < len(spans) and begin >= spans[k][1][1]:
            (old_start, old_end), (new_start, new_end) = spans[k]
            shift += (new_end - new_start) - (old_end - old_start)
            k += 1
        if k < len(spans) and begin >= spans[k][1][0]:
            bounds[k] = [min(bounds[k][0], t), t + 1]
            labels.append(IGNORE)
            continue
        i = text_token_at.get(begin - shift)
        if i is None or example.input_ids[i] != token:
            raise ConversationRefused("the model's processor tokenizes the text around an image differently from its "
                                      "tokenizer, so the trained tokens cannot be found")
        labels.append(example.labels[i])
    images = tuple(ExampleImage(data, start, end) for data, (start, end) in zip(files, bounds, strict=True))
    return Example(ids, labels, images)


class ImageInputs:
    """What a batch's images give the model: their inputs, and the model's own rules for image tokens.

    ``encode`` runs the batch's images (in token order) through the processor: ``pixel_values`` and
    whatever else its image processor returns (``image_grid_thw``, ``image_sizes``, …). Two kinds of model
    treat image tokens apart from text, and ``collate`` applies their rules to each example on its own, so
    a packed row is each example exactly as the model would see it alone:

    * three-axis rotary positions (Qwen2-VL, Qwen2.5-VL, Qwen3-VL: M-RoPE): an image's tokens are placed on a
      grid of time, height and width. ``positions`` computes them with the model's own ``get_rope_index``.
    * attention within an image in both directions (Gemma 3): ``blocks`` numbers each image's tokens with
      the model's own ``get_block_sequence_ids_for_mask``; a token sees every token of its block.

    Both read the processor's modality ids (``create_mm_token_type_ids``), as the model's forward would.
    """

    def __init__(self, processor: Any, model: Any = None):
        self.processor = processor
        inner = _transformers_model(model)
        self.refusal = vision_refusal(inner) if inner is not None else None
        self.rope_index = next((m.get_rope_index for m in inner.modules() if hasattr(m, "get_rope_index")),
                               None) if inner is not None else None
        self.block_ids = getattr(sys.modules[type(inner).__module__], "get_block_sequence_ids_for_mask", None) \
            if inner is not None else None

    def encode(self, images: Sequence[ExampleImage]) -> dict[str, torch.Tensor]:
        if not images:
            return {}
        if self.refusal is not None:
            raise TrainingFailed(f"this model cannot train on images: {self.refusal}", user_error=True)
        out = self.processor(images=[open_image(image.data) for image in images], return_tensors="pt")
        # Some processors (Gemma 3's) also make a text of placeholders for images given alone: its ids are not ours.
        text = {*self.processor.tokenizer.model_input_names, "token_type_ids", "mm_token_type_ids"}
        return {key: value for key, value in out.items() if isinstance(value, torch.Tensor) and key not in text}

    def positions(self, input_ids: Sequence[int], image_grids: torch.Tensor | None) -> torch.Tensor | None:
        """``[3, n]`` M-RoPE positions of one example whose images have these grids (``image_grid_thw``
        rows, in order), or None for a model with one-axis positions."""
        if self.rope_index is None:
            return None
        positions, _ = self.rope_index(torch.tensor([list(input_ids)]), mm_token_type_ids=self._types(input_ids),
                                       image_grid_thw=image_grids)
        return positions[:, 0]

    def blocks(self, input_ids: Sequence[int]) -> torch.Tensor | None:
        """``[n]`` image block of each token of one example (-1: none), or None for a causal-only model."""
        if self.block_ids is None:
            return None
        blocks: torch.Tensor = self.block_ids(self._types(input_ids))[0]
        return blocks

    def _types(self, input_ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor(self.processor.create_mm_token_type_ids([list(input_ids)]))


def _transformers_model(model: Any) -> Any:
    """The transformers model under a peft wrapper, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def with_images(renderer: Renderer, processor: Any | None) -> Renderer | VisionRenderer:
    """``renderer`` as it is for a text model; wrapped to place images for a vision-language one."""
    return renderer if processor is None else VisionRenderer(renderer, processor)


def image_inputs(processor: Any | None, model: Any = None) -> ImageInputs | None:
    return None if processor is None else ImageInputs(processor, model)
