"""Which kind of transformers model a config describes, and the Auto class that builds it.

A vision-language model (LLaVA, Qwen2-VL, SmolVLM, Gemma 3, …) has a ``vision_config`` and an
image-text-to-text class; it loads with ``AutoModelForImageTextToText`` and its inputs come from
``AutoProcessor``. Everything else is a text model, loaded with ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import inspect
from typing import Any

# Vision-language families whose image inputs tunery's batches cannot carry, and why (limits report
# supports_vision false for them; create refuses their image data with this reason).
UNSUPPORTED_VISION = {
    "mllama": "Mllama (Llama 3.2 Vision) reads images through cross-attention, with a mask that pairs each row "
              "of a batch with its own images; tunery packs several samples into a row and cannot build it",
    "paligemma": "PaliGemma trains on prefix and suffix pairs with two-way attention over the whole prefix, "
                 "not on chat conversations, and has no chat template",
}


def is_vision_language(config: Any) -> bool:
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    return getattr(config, "vision_config", None) is not None and type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING


def auto_model_class(config: Any) -> Any:
    """``AutoModelForImageTextToText`` for a vision-language config, else ``AutoModelForCausalLM``."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM


def vision_refusal(model: Any) -> str | None:
    """Why tunery cannot train vision-language ``model`` (a transformers model, weights or not) on images;
    None when it can. Models with three-axis image positions are trained through their own
    ``get_rope_index``, which must take the tokens' modalities and the images' grids."""
    reason = UNSUPPORTED_VISION.get(model.config.model_type)
    if reason is not None:
        return reason
    for module in model.modules():
        rope_index = getattr(module, "get_rope_index", None)
        if rope_index is not None and not {"mm_token_type_ids", "image_grid_thw"} <= set(
                inspect.signature(rope_index).parameters):
            return (f"{type(model).__name__} places image tokens with a get_rope_index that takes no token "
                    "modalities and image grids, which tunery needs to give each packed sample its own positions")
    return None
