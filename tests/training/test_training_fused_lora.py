"""Fused LoRA layers (``training/fused_lora.py``) compute what peft's layers compute, values and
gradients, and hand back to peft's forward in the states they do not cover."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tunery.training.config import TrainConfig
from tunery.training.fused_lora import _plain_adapter
from tunery.training.model import _with_lora, load_causal_lm


def _lora_model(tiny_llama: Path, **lora: Any) -> Any:
    torch.manual_seed(0)
    cfg = TrainConfig(job_id="ft-f", base_model_dir=str(tiny_llama), train_file="t", output_dir="o",
                      lora={"r": 4, **lora})
    model = _with_lora(load_causal_lm(tiny_llama, torch.float32), cfg, None)
    with torch.no_grad():  # peft starts B at zero, which would hide A's gradient and the update
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return model


def _unfused(model: Any) -> None:
    for layer in model.modules():
        vars(layer).pop("forward", None)  # peft's class forward again


def _logits_and_grads(model: Any) -> list[torch.Tensor]:
    ids = torch.randint(5, 600, (2, 16), generator=torch.Generator().manual_seed(0))
    model.zero_grad()
    logits = model(input_ids=ids).logits
    (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
    return [logits.detach(), *(p.grad.clone() for p in model.parameters() if p.requires_grad)]


def test_fused_lora_layers_give_peft_values_and_gradients(tiny_llama: Path) -> None:
    model = _lora_model(tiny_llama)
    fused_layers = [m for m in model.modules() if "forward" in vars(m)]
    assert len(fused_layers) == 4 * 7  # every projection of the 4 layers
    fused = _logits_and_grads(model)
    _unfused(model)
    plain = _logits_and_grads(model)
    assert len(fused) == len(plain) == 1 + 2 * 4 * 7
    for a, b in zip(fused, plain, strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


@pytest.mark.parametrize("state", ["dropout", "disabled"])
def test_states_the_fused_op_does_not_cover_run_pefts_forward(tiny_llama: Path, state: str) -> None:
    model = _lora_model(tiny_llama, dropout=0.5 if state == "dropout" else 0.0)
    layer = next(m for m in model.modules() if "forward" in vars(m))
    ids = torch.randint(5, 600, (1, 8))
    if state == "dropout":
        assert _plain_adapter(layer) is None
        return
    base = load_causal_lm(tiny_llama, torch.float32)
    with model.disable_adapter():
        assert _plain_adapter(layer) is None
        assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    assert _plain_adapter(layer) == "default"
