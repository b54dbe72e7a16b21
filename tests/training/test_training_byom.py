"""Bring your own model (``from_hf_model``): the weights trained are the job's own, and they must be
built like the job's template ``model``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tunery.errors import TrainingFailed
from tunery.training.config import TrainConfig
from tunery.training.recipes import dpo, sft
from tunery.training.reporter import ListReporter

pytestmark = pytest.mark.slow

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def rebuilt(template: Path, out: Path, config_class: Any, seed: int, **changes: Any) -> Path:
    """A model with ``template``'s tokenizer and config (with ``changes``), freshly initialised."""
    from transformers import AutoConfig, AutoModelForCausalLM

    base = AutoConfig.from_pretrained(template).to_dict()
    for key in ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype"):
        base.pop(key, None)
    config = config_class(**{**base, **changes})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (template / name).exists():
            shutil.copy(template / name, out / name)
    return out


def byom_config(template: Path, weights: Path, data: Path, out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "job_id": "ft-byom", "base_model_dir": str(weights), "base_model_name": "tunery/tiny-llama",
        "template_model_dir": str(template), "from_hf_model": "someone/tiny-llama-reseeded",
        "hf_model_revision": "main", "train_file": str(data), "output_dir": str(out), "lora": {"r": 4},
        "n_epochs": 1, "learning_rate": 5e-3, "batch_size": 4, "max_seq_length": 64,
    }
    values.update(overrides)
    return TrainConfig(**values)


def test_a_model_like_the_template_is_the_one_trained(tiny_llama: Path, qa_files: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    from transformers import LlamaConfig

    own = rebuilt(tiny_llama, tmp_path / "reseeded", LlamaConfig, seed=7)
    reporter = ListReporter()
    result = sft.run(byom_config(tiny_llama, own, qa_files[0], tmp_path / "out"), reporter)
    assert result.status == "completed"
    merged = load_file(Path(str(result.path)) / "model" / "model.safetensors")
    embeddings = "model.embed_tokens.weight"  # not adapted: exactly the base's
    assert torch.equal(merged[embeddings], load_file(own / "model.safetensors")[embeddings])
    assert not torch.equal(merged[embeddings], load_file(tiny_llama / "model.safetensors")[embeddings])


def test_another_architecture_is_refused_naming_both(tiny_llama: Path, qa_files: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    from transformers import MistralConfig

    other = rebuilt(tiny_llama, tmp_path / "mistral", MistralConfig, seed=1, sliding_window=None)
    for recipe, method in ((sft, "sft"), (dpo, "dpo")):
        cfg = byom_config(tiny_llama, other, qa_files[0], tmp_path / "out", method=method,
                          from_hf_model="someone/tiny-mistral")
        with pytest.raises(TrainingFailed) as caught:
            recipe.run(cfg, ListReporter())
        message = caught.value.message
        assert caught.value.user_error
        assert "someone/tiny-mistral is a mistral (MistralForCausalLM) model" in message
        assert "tunery/tiny-llama is a llama (LlamaForCausalLM) model" in message
