"""Per-model training limits, derived from the model's own config, in Together's
``FinetuneModelLimits`` shape (the SDK dereferences every field, so all are always present).

The model is instantiated on the ``meta`` device (no memory, no weights read) to find its linear
layers and count its parameters.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunery.models.architecture import auto_model_class, is_vision_language, vision_refusal

MAX_LORA_RANK = 64
MIN_MAX_SEQ_LENGTH = 128
MAX_SEQ_LENGTH_CAP = 131072


def model_limits(model_name: str, model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the ``FinetuneModelLimits`` dict for the model stored in ``model_dir``."""
    facts = _model_facts(str(Path(model_dir).resolve()), _mtime(model_dir))
    max_seq = facts["max_seq_length"]
    max_batch = _max_batch_size(facts["param_count"])
    max_batch_dpo = max(1, max_batch // 2)
    max_rank = min(MAX_LORA_RANK, facts["hidden_size"])
    return {
        "model_name": model_name,
        "default_gradient_accumulation_steps": 1,
        "lora_training": {
            # The v1 SDK defaults lora_r to max_rank and v2 to default_rank; equal, both give one result.
            # At rank 64 the built-in tiny model learns the quickstart set; at rank 8 it falls short.
            "default_rank": max_rank,
            "max_batch_size": max_batch,
            "max_batch_size_dpo": max_batch_dpo,
            "max_rank": max_rank,
            "min_batch_size": 1,
            "target_modules": facts["target_modules"],
        },
        "full_training": {"max_batch_size": max_batch, "max_batch_size_dpo": max_batch_dpo, "min_batch_size": 1},
        "max_learning_rate": 1.0,
        "min_learning_rate": 1e-8,
        "max_num_checkpoints": 20,
        "max_num_epochs": 100,
        "max_num_evals": 100,
        "max_seq_length_sft": max_seq,
        "max_seq_length_dpo": max_seq,
        "min_max_seq_length": min(MIN_MAX_SEQ_LENGTH, max_seq),
        "merge_output_lora": True,
        "supports_full_training": True,
        "supports_reasoning": facts["supports_reasoning"],
        "supports_tools": facts["supports_tools"],
        "supports_vision": facts["supports_vision"],
    }


def _max_batch_size(param_count: int) -> int:
    # Rows of max_seq_length tokens per micro-batch that fit a single 80 GB GPU comfortably;
    # gradient accumulation covers anything larger.
    if param_count <= 1_000_000_000:
        return 16
    if param_count <= 10_000_000_000:
        return 8
    return 4


def _mtime(model_dir: str | os.PathLike[str]) -> float:
    return (Path(model_dir) / "config.json").stat().st_mtime


@lru_cache(maxsize=64)
def _model_facts(model_dir: str, _mtime: float) -> dict[str, Any]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    text_config = config.get_text_config()
    with torch.device("meta"):
        model = auto_model_class(config).from_config(config)
    template = _chat_template(Path(model_dir))
    return {
        "max_seq_length": min(int(getattr(text_config, "max_position_embeddings", 2048)), MAX_SEQ_LENGTH_CAP),
        "hidden_size": int(getattr(text_config, "hidden_size", MAX_LORA_RANK)),
        "param_count": sum(p.numel() for p in model.parameters()),
        "target_modules": linear_module_names(model),
        "supports_tools": "tools" in template,
        "supports_reasoning": "reasoning" in template or "<think>" in template,
        "vision_refusal": vision_refusal(model) if is_vision_language(config) else None,
        "supports_vision": is_vision_language(config) and vision_refusal(model) is None,
    }


def why_no_vision(model_dir: str | os.PathLike[str]) -> str | None:
    """Why the vision-language model in ``model_dir`` cannot train on images (None for a text model or one
    that can)."""
    reason: str | None = _model_facts(str(Path(model_dir).resolve()), _mtime(model_dir))["vision_refusal"]
    return reason


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the linear layers, without the output head (LoRA's "all-linear")."""
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not output
    }
    return sorted(names)


def _chat_template(model_dir: Path) -> str:
    parts = []
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        parts.append(jinja.read_text())
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        parts.append(json.dumps(template) if template else "")
    return "\n".join(parts)
