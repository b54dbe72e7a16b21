"""The vision part of a vision-language model, and what ``train_vision`` does to it.

The vision part is everything that is neither the language model (``get_decoder()``) nor the output
head: LLaVA's CLIP tower and projector, Qwen2-VL's ``visual`` tower with its merger, and so on. With
``train_vision`` false it stays as loaded: full fine-tuning freezes it, LoRA adapts only the
language model's linear layers. With ``train_vision`` true it trains as well: every parameter in full
fine-tuning, its linear layers too under LoRA.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from tunery.errors import TrainingFailed


def _language_ids(model: Any) -> set[int]:
    """ids of the language model's and the output head's modules and parameters."""
    keep: list[nn.Module] = [model.get_decoder()]
    head = model.get_output_embeddings()
    if head is not None:
        keep.append(head)
    return {id(x) for part in keep for x in (*part.modules(), *part.parameters())}


def vision_parameters(model: Any) -> list[nn.Parameter]:
    language = _language_ids(model)
    return [p for p in model.parameters() if id(p) not in language]


def freeze_vision(model: Any) -> None:
    for parameter in vision_parameters(model):
        parameter.requires_grad_(False)


def lora_targets(model: Any, names: Literal["all-linear"] | list[str], train_vision: bool) -> list[str]:
    """Full names of the linear layers LoRA adapts: those named ``names`` (leaf names, or every one)
    in the language model, and in the vision part too when ``train_vision``; never the output head."""
    language = _language_ids(model)
    head = model.get_output_embeddings()
    targets = [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
        and (names == "all-linear" or name.rsplit(".", 1)[-1] in names)
        and (train_vision or id(module) in language)
    ]
    if not targets:
        where = "the model" if train_vision else "the language model (train_vision is false)"
        raise TrainingFailed(f"lora_trainable_modules {names} match no linear layer of {where}", user_error=True)
    return targets
