"""Chat requests to a vision-language model: images in ``image_url`` content parts, as Together's and
OpenAI's chat APIs send them, made into the model's inputs the way training made them.

``VisionChat`` renders a conversation for one model: the image parts become the template's image
placeholders, the images are decoded and checked as dataset images are (``tunery.datasets.images``:
base64 data URLs of JPEG, PNG or WebP, at most 10 MiB and ``MAX_IMAGES_PER_SAMPLE`` of them), and the
model's own processor expands each placeholder into its image tokens and computes the pixel values.
What the model's forward pass takes besides the tokens (``pixel_values``, ``image_grid_thw``, Gemma 3's
``token_type_ids``, …) goes with the request to its prefill; a three-axis-position model's (Qwen2-VL's)
prompt positions come from its own ``get_rope_index`` (``ImageInputs.positions``).

Images are never fetched from the network: a URL that is not a data URL is refused by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tunery.datasets.images import MAX_IMAGES_PER_SAMPLE, ImageInvalid, decode_image_url
from tunery.errors import InvalidRequest
from tunery.inference.chat import normalise_messages
from tunery.models.processor import content_as_parts, renders_string_content
from tunery.training.data.images import ImageInputs, split_images


@dataclass(frozen=True)
class VisionPrompt:
    """A rendered conversation: its text and token ids (image tokens expanded), what the prefill's forward
    pass takes besides the tokens, and the prompt's position ids where they are not ``0..n-1``."""

    text: str
    ids: list[int]
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    positions: torch.Tensor | None = None  # [axes, n]


def has_images(messages: Sequence[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"])
               for m in messages)


class VisionChat:
    """Renders conversations, with or without images, for one vision-language model and its processor."""

    def __init__(self, processor: Any, model: Any):
        self.processor = processor
        self.images = ImageInputs(processor, model)
        self.as_parts = not renders_string_content(processor.tokenizer)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        # The processor's outputs the model's forward takes (a LLaVA processor's image_sizes, say, may not be).
        self.accepted = set(inspect.signature(inner.forward).parameters)

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
               template_kwargs: dict[str, Any]) -> VisionPrompt:
        """Raises InvalidRequest (``messages``) for a bad image; template errors pass through to the caller."""
        messages = normalise_messages(messages)
        if self.as_parts:
            messages = content_as_parts(messages)
        messages, urls = split_images(messages)
        images = self._decode(urls)
        if images and self.images.refusal is not None:
            raise InvalidRequest(f"this model cannot take images: {self.images.refusal}", param="messages")
        text = str(self.processor.tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                                add_generation_prompt=True, **template_kwargs))
        if not images:
            return VisionPrompt(text, list(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]))
        # The template writes any BOS token itself, as for text chats (``render_chat``).
        out = self.processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False)
        ids = out["input_ids"][0].tolist()
        inputs = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask") and k in self.accepted
                  and isinstance(v, torch.Tensor)}
        return VisionPrompt(text, ids, inputs, self.images.positions(ids, inputs.get("image_grid_thw")))

    @staticmethod
    def _decode(urls: list[str]) -> list[Any]:
        if len(urls) > MAX_IMAGES_PER_SAMPLE:
            raise InvalidRequest(f"the messages hold {len(urls)} images; at most {MAX_IMAGES_PER_SAMPLE} are allowed",
                                 param="messages")
        images = []
        for i, url in enumerate(urls):
            try:
                images.append(decode_image_url(url))
            except ImageInvalid as exc:
                raise InvalidRequest(f"image {i + 1} of the messages {exc.problem}; got {_shown(exc.value)}",
                                     param="messages") from None
        return images


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."
