"""Tiny vision-language models of the families users fine-tune, built locally: random weights from a fixed
seed, the family's real model, processor and image-processor classes, and its real chat template
(``tests/fixtures``). Each is saved as the Hub ships it, so it loads with ``AutoModelForImageTextToText``,
and with ``AutoProcessor`` where torchvision is installed: Qwen's processors name a video processor
(``Qwen2VLVideoProcessor``), which transformers builds only with torchvision, and tunery loads them
without it (``tunery.models.processor``).

    qwen2-vl     Qwen2VLForConditionalGeneration: three-axis image positions (M-RoPE), sizes vary per image
    qwen2.5-vl   Qwen2_5_VLForConditionalGeneration: the same, with window attention in its vision tower
    smolvlm      Idefics3ForConditionalGeneration (SmolVLM-Instruct): images split into tiles, a template
                 that prints only content parts
    gemma-3      Gemma3ForConditionalGeneration: two-way attention within an image
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunery.models.builtin import build_tokenizer
from tunery.models.processor import NoVideos

FIXTURES = Path(__file__).resolve().parent / "fixtures"
QWEN_TEMPLATE = (FIXTURES / "vlm_templates" / "qwen2-vl-instruct.jinja").read_text()
SMOLVLM_TEMPLATE = (FIXTURES / "vlm_templates" / "smolvlm-instruct.jinja").read_text()
GEMMA3_TEMPLATE = (FIXTURES / "chat_templates" / "gemma-3-1b-it.jinja").read_text()
SEED = 0


def _text(tokenizer: Any, **extra: Any) -> dict[str, Any]:
    """A tiny language model's config for ``tokenizer``."""
    return {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024,
            "initializer_range": 0.2, "pad_token_id": tokenizer.pad_token_id, **extra}


def _tokenizer(specials: list[str], named: dict[str, str] | None = None, **tokens: str) -> Any:
    """The built-in tiny tokenizer with the family's special tokens (``named`` ones as tokenizer attributes,
    as Gemma 3's ``image_token``/``boi_token``)."""
    tokenizer = build_tokenizer(1024)
    tokenizer.add_special_tokens({"additional_special_tokens": specials, **tokens})
    if named:
        tokenizer._set_model_specific_special_tokens(special_tokens=named)
    return tokenizer


def _qwen(out: Path, version: str) -> None:
    import transformers as tf
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = _tokenizer(specials, eos_token="<|im_end|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    # head_dim 32: 16 rotary frequencies split 4/6/6 over time, height and width.
    text = _text(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
                 eos_token_id=ids["<|im_end|>"], bos_token_id=None)
    vision: dict[str, Any] = {"depth": 2, "hidden_size": 64, "num_heads": 2, "patch_size": 4, "spatial_merge_size": 2,
                              "temporal_patch_size": 2}
    if version == "2":
        vision.update(embed_dim=32, mlp_ratio=2)
        config_class, model_class, processor_class = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, \
            tf.Qwen2VLProcessor
    else:
        vision.update(intermediate_size=64, out_hidden_size=64, window_size=16, fullatt_block_indexes=[1])
        config_class, model_class, processor_class = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, \
            tf.Qwen2_5_VLProcessor
    config = config_class(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                          video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                          vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(SEED)
    model_class(config).save_pretrained(out)
    # 4-pixel patches merged 2x2: a 40x30 image becomes 5x4 = 20 image tokens.
    image_processor = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8,
                                               max_pixels=64 * 64)
    processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=NoVideos(),
                    chat_template=QWEN_TEMPLATE).save_pretrained(out)
    # What the Hub ships in the video processor's place (transformers needs torchvision to build it).
    path = out / "processor_config.json"
    saved = json.loads(path.read_text())
    saved["video_processor"] = {"video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 4, "merge_size": 2,
                                "temporal_patch_size": 2}
    path.write_text(json.dumps(saved, indent=2))


def _smolvlm(out: Path) -> None:
    import transformers as tf
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tiles = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tokenizer = _tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *tiles],
                           bos_token="<|im_start|>")
    text = _text(tokenizer, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                 eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_utterance>"))
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    config = tf.Idefics3Config(vision_config=vision, text_config=text, scale_factor=2,
                               image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(SEED)
    tf.Idefics3ForConditionalGeneration(config).save_pretrained(out)
    # Images up to 64 pixels, split into 32-pixel tiles (plus the whole image): 4 image tokens per tile.
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    tf.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                         chat_template=SMOLVLM_TEMPLATE).save_pretrained(out)


def _gemma3(out: Path) -> None:
    import transformers as tf
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
    tokenizer = _tokenizer(["<start_of_turn>", "<end_of_turn>", *named.values()], named, bos_token="<bos>",
                           eos_token="<eos>")
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in named.items()}
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    text = _text(tokenizer, head_dim=32, query_pre_attn_scalar=32, sliding_window=512,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=[tokenizer.eos_token_id, end_of_turn])
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 64, "patch_size": 8}
    config = tf.Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=16,
                             boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"],
                             image_token_index=ids["image_token"])
    torch.manual_seed(SEED)
    tf.Gemma3ForConditionalGeneration(config).save_pretrained(out)
    # 64x64 pixels in 8x8 patches, pooled to 4x4 = 16 image tokens per image.
    tf.Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tokenizer,
                       image_seq_length=16, chat_template=GEMMA3_TEMPLATE).save_pretrained(out)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "qwen2-vl": lambda out: _qwen(out, "2"),
    "qwen2.5-vl": lambda out: _qwen(out, "2.5"),
    "smolvlm": _smolvlm,
    "gemma-3": _gemma3,
}
FAMILIES = sorted(BUILDERS)


def build_family(name: str, root: Path) -> Path:
    """The tiny model of family ``name`` under ``root`` (built on first use)."""
    out = root / name
    if not out.is_dir():
        building = root / f".{name}-building"
        shutil.rmtree(building, ignore_errors=True)
        with torch.random.fork_rng(devices=[]):
            BUILDERS[name](building)
        building.rename(out)
    return out
