"""The built-in vision-language model ``tunery/tiny-vlm``: LLaVA, made tiny.

A ``LlavaForConditionalGeneration`` (a CLIP vision tower, a two-layer projector and a Llama
language model like ``tunery/tiny-llama``'s), randomly initialised from a fixed seed, with a
``LlavaProcessor``: a CLIP image processor (the PIL backend, so no torchvision is needed) and the
built-in tokenizer with an ``<image>`` token and a chat template that renders image parts as it.
Each image becomes ``(image_size / patch_size)**2`` image tokens. The directory loads with
``AutoModelForImageTextToText`` and ``AutoProcessor`` like any hub VLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunery.models.builtin import VisionSpec

IMAGE_TOKEN = "<image>"
# CLIP's normalisation, as LLaVA's processors use.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_vlm(spec: VisionSpec, text_config: Any, tokenizer: Any, generation: Any, out: Path) -> None:
    """Save the model (random weights from the caller's RNG state) and its processor in ``out``.

    ``text_config``, ``tokenizer`` (with ``IMAGE_TOKEN``) and ``generation`` are the built-in
    language model's, from ``builtin.py``."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_tokens = (spec.image_size // spec.patch_size) ** 2
    vision_config = CLIPVisionConfig(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.hidden_size,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=image_tokens,
        vision_feature_layer=-1,  # the tower's last layer: it has only a few
        vision_feature_select_strategy="default",  # drop CLS: one token per patch
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config = generation
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, which the "default" strategy drops again
        image_token=IMAGE_TOKEN,
        chat_template=tokenizer.chat_template,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
