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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tunery.datasets import DatasetFormat
from tunery.datasets.images import ImageInvalid, image_bytes, open_image
from tunery.errors import TrainingFailed
from tunery.models.architecture import is_vision_language
from tunery.training.data.chat import ConversationRefused
from tunery.training.data.render import IGNORE, Example, ExampleImage, Marked, Renderer, TrainOnInputs


def load_processor(model_dir: str | Path) -> Any | None:
    """The model's ``AutoProcessor`` if it is a vision-language model, else None. Its tokenizer renders
    with the processor's chat template, which knows where images go."""
    from transformers import AutoConfig, AutoProcessor

    if not is_vision_language(AutoConfig.from_pretrained(model_dir)):
        return None
    processor = AutoProcessor.from_pretrained(model_dir)
    if getattr(processor, "image_token", None) is None or not hasattr(processor, "image_processor"):
        raise TrainingFailed(f"the processor of {model_dir} has no image token or image processor, so images "
                             "cannot be placed in its sequences", user_error=True)
    if processor.chat_template:
        processor.tokenizer.chat_template = processor.chat_template
    return processor


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

    @property
    def train_on_inputs(self) -> TrainOnInputs:
        return self.text.train_on_inputs

    def render(self, record: dict[str, Any], fmt: DatasetFormat) -> Example:
        return self.marked(record, fmt).example

    def marked(self, record: dict[str, Any], fmt: DatasetFormat) -> Marked:
        if fmt is not DatasetFormat.CONVERSATION:
            return self.text.marked(record, fmt)
        messages, urls = split_images(record["messages"])
        marked = self.text.marked({**record, "messages": messages}, fmt)
        return self._expand(marked, urls) if urls else marked

    def preference(self, record: dict[str, Any]) -> tuple[Example, Example]:
        chosen, rejected = self.marked_preference(record)
        return chosen.example, rejected.example

    def marked_preference(self, record: dict[str, Any]) -> tuple[Marked, Marked]:
        """As ``Renderer.marked_preference``; the prompt's images are in both sequences."""
        messages, urls = split_images(record["input"]["messages"])
        chosen, rejected = self.text.marked_preference({**record, "input": {**record["input"], "messages": messages}})
        return (self._expand(chosen, urls), self._expand(rejected, urls)) if urls else (chosen, rejected)

    def _expand(self, marked: Marked, urls: list[str]) -> Marked:
        """``marked`` with each image placeholder expanded into the processor's image tokens, labelled
        ``IGNORE``; the text is the expanded text the tokens come from."""
        files = [_image_file(url, i) for i, url in enumerate(urls)]
        expanded = self.processor(text=[marked.text], images=[[open_image(f) for f in files]],
                                  add_special_tokens=False, return_offsets_mapping=True,
                                  return_text_replacement_offsets=True)
        replaced = [r for r in (expanded.get("text_replacement_offsets") or [[]])[0] if r["type"] == "image"]
        if len(replaced) != len(files):
            raise ConversationRefused(
                f"the model's processor placed {len(replaced)} of the sample's {len(files)} images: its chat "
                f"template must render each image part as {self.processor.image_token!r}, and the processor must "
                "report where it puts image tokens (text_replacement_offsets)")
        text, position = [], 0
        for r in replaced:
            text += [marked.text[position : r["span"][0]], r["replacement"]]
            position = r["span"][1]
        offsets = [(int(a), int(b)) for a, b in expanded["offset_mapping"][0]]
        example = _relabel(marked.example, marked.offsets, list(expanded["input_ids"][0]), offsets,
                           [(r["span"], r["new_span"]) for r in replaced], files)
        return Marked(example, "".join(text) + marked.text[position:], offsets)


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


class ImageEncoder:
    """A batch's images (in token order) → the model's image inputs, through its processor."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, images: Sequence[ExampleImage]) -> dict[str, torch.Tensor]:
        if not images:
            return {}
        out = self.processor(images=[open_image(image.data) for image in images], return_tensors="pt")
        return {key: value for key, value in out.items() if isinstance(value, torch.Tensor)}


def with_images(renderer: Renderer, processor: Any | None) -> Renderer | VisionRenderer:
    """``renderer`` as it is for a text model; wrapped to place images for a vision-language one."""
    return renderer if processor is None else VisionRenderer(renderer, processor)


def image_encoder(processor: Any | None) -> ImageEncoder | None:
    return None if processor is None else ImageEncoder(processor)
