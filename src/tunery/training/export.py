"""Write the weights of a checkpoint or of the final export.

    <dir>/adapter/   LoRA only: peft ``save_pretrained`` + tokenizer + training_config.json
    <dir>/model/     a complete transformers model dir (LoRA: base with the adapter merged in;
                     full: the trained model) + tokenizer + training_config.json

A vision-language model's directories hold its whole processor (tokenizer, image processor, chat
template), its files copied as the base model has them, so each loads with
``AutoModelForImageTextToText`` and ``AutoProcessor`` as the base does.

``training_config.json`` is the resolved training config without secrets. The merge happens on
CPU in a fresh copy of the base (loaded from disk), so the model being trained, its device memory
and the random number streams are left exactly as they were.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tunery.models.processor import processor_files
from tunery.training.model import LoadedModel, load_causal_lm

CONFIG_FILE = "training_config.json"


def write_weights(out: Path, loaded: LoadedModel, config: dict[str, Any],
                  state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``adapter/`` (LoRA) and ``model/`` under ``out`` (which must exist). ``state_dict``: the
    model's whole weights when they are sharded over ranks (gathered by ``fsdp.gathered_state``)."""
    model_dir = out / "model"
    if loaded.is_lora:
        adapter_dir = out / "adapter"
        loaded.model.save_pretrained(adapter_dir)
        _finish(adapter_dir, loaded, config)
        merge_adapter(loaded.base_dir, adapter_dir, model_dir)
    else:
        loaded.model.save_pretrained(model_dir, state_dict=state_dict)
    _finish(model_dir, loaded, config)


def merge_adapter(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Save ``base + adapter`` merged as a plain model in ``out``, in the base's stored dtype."""
    from peft import PeftModel

    with torch.random.fork_rng(devices=[]):  # peft initialises LoRA weights before loading them
        base = load_causal_lm(base_dir, torch.float32)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    stored = _stored_dtype(base_dir)
    if stored is not None:
        merged.to(stored)
    merged.save_pretrained(out)


def _stored_dtype(model_dir: Path) -> torch.dtype | None:
    config = json.loads((model_dir / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name))


def _finish(directory: Path, loaded: LoadedModel, config: dict[str, Any]) -> None:
    if loaded.processor_dir is not None:
        # Copied, not saved: a processor loaded without torchvision stands in for its video processor.
        for source in processor_files(loaded.processor_dir):
            target = directory / source.relative_to(loaded.processor_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    else:
        loaded.tokenizer.save_pretrained(directory)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
