from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunery.models.limits import model_limits, why_no_vision

# Together's FinetuneModelLimits (together-sdk-contract.md §4.1): every field, always present.
TOP_LEVEL = {
    "model_name", "default_gradient_accumulation_steps", "lora_training", "full_training", "max_learning_rate",
    "min_learning_rate", "max_num_checkpoints", "max_num_epochs", "max_num_evals", "max_seq_length_sft",
    "max_seq_length_dpo", "min_max_seq_length", "merge_output_lora", "supports_full_training",
    "supports_reasoning", "supports_tools", "supports_vision",
}
LORA = {"default_rank", "max_batch_size", "max_batch_size_dpo", "max_rank", "min_batch_size", "target_modules"}
FULL = {"max_batch_size", "max_batch_size_dpo", "min_batch_size"}


def test_limits_have_together_shape_and_come_from_the_model(tiny_llama: Path) -> None:
    limits = model_limits("tunery/tiny-llama", tiny_llama)
    assert set(limits) == TOP_LEVEL
    assert set(limits["lora_training"]) == LORA and set(limits["full_training"]) == FULL
    assert limits["model_name"] == "tunery/tiny-llama"
    assert limits["max_seq_length_sft"] == limits["max_seq_length_dpo"] == 1024
    assert limits["min_max_seq_length"] == 128
    assert limits["lora_training"]["target_modules"] == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    lora = limits["lora_training"]
    assert lora["min_batch_size"] <= lora["max_batch_size_dpo"] <= lora["max_batch_size"]
    assert lora["default_rank"] <= lora["max_rank"] <= 128
    assert limits["supports_full_training"] and limits["supports_tools"] and not limits["supports_vision"]
    json.dumps(limits)  # plain JSON types only


def test_min_max_seq_length_never_exceeds_a_short_context(tiny_llama: Path, tmp_path: Path) -> None:
    short = tmp_path / "short"
    shutil.copytree(tiny_llama, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    limits = model_limits("short", short)
    assert limits["max_seq_length_sft"] == 64 and limits["min_max_seq_length"] == 64


def test_a_vision_language_model_supports_vision_and_lists_its_vision_modules(tiny_vlm: Path) -> None:
    limits = model_limits("tunery/tiny-vlm", tiny_vlm)
    assert set(limits) == TOP_LEVEL and limits["supports_vision"] is True
    assert limits["max_seq_length_sft"] == 1024  # the language model's context
    # LoRA may target the language model's layers and (train_vision) the CLIP tower's and projector's.
    assert {"q_proj", "down_proj", "fc1", "out_proj", "linear_1"} <= set(limits["lora_training"]["target_modules"])
    assert "lm_head" not in limits["lora_training"]["target_modules"]


def test_three_axis_positions_are_offered_for_images(tmp_path: Path) -> None:
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig(text_config={"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 64,
                                        "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 512},
                           vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2})
    config.save_pretrained(tmp_path)
    assert model_limits("qwen2-vl", tmp_path)["supports_vision"] is True  # each sample's own positions
    assert why_no_vision(tmp_path) is None


def test_families_tunery_cannot_train_on_images_say_why(tmp_path: Path) -> None:
    from transformers import MllamaConfig

    config = MllamaConfig(text_config={"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 64,
                                       "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 512,
                                       "cross_attention_layers": [1], "pad_token_id": 0, "bos_token_id": 1,
                                       "eos_token_id": 2},
                          vision_config={"num_hidden_layers": 1, "num_global_layers": 1, "hidden_size": 32,
                                         "intermediate_size": 64, "attention_heads": 2, "image_size": 32,
                                         "patch_size": 8, "intermediate_layers_indices": [0]})
    config.save_pretrained(tmp_path)
    assert model_limits("llama-3.2-vision", tmp_path)["supports_vision"] is False
    assert "cross-attention" in str(why_no_vision(tmp_path))
