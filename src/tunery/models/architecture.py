"""Which kind of transformers model a config describes, and the Auto class that builds it.

A vision-language model (LLaVA, Qwen2-VL, SmolVLM, Gemma 3, …) has a ``vision_config`` and an
image-text-to-text class; it loads with ``AutoModelForImageTextToText`` and its inputs come from
``AutoProcessor``. Everything else is a text model, loaded with ``AutoModelForCausalLM``.
"""

from __future__ import annotations

from typing import Any


def is_vision_language(config: Any) -> bool:
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    return getattr(config, "vision_config", None) is not None and type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING


def auto_model_class(config: Any) -> Any:
    """``AutoModelForImageTextToText`` for a vision-language config, else ``AutoModelForCausalLM``."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM
