"""The CUDA precision policy, exercised on CPU (this box has no GPU): LoRA over a bf16 frozen base
keeps its adapters in fp32, and the autocast forward gives fp32 log-probabilities and fp32 adapter
gradients.
What only a GPU can show (speed, the bf16 kernels themselves) is not tested here."""

from __future__ import annotations

from pathlib import Path

import torch

from tunery.training.config import TrainConfig
from tunery.training.data.collate import attention_bias
from tunery.training.model import LoadedModel, _with_lora, forward_logps, load_causal_lm, load_tokenizer, mask_dtype


def test_lora_on_a_bf16_base_trains_fp32_adapters_under_autocast(tiny_llama: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(job_id="ft-p", base_model_dir=str(tiny_llama), train_file="t.jsonl", output_dir=str(tmp_path),
                      lora={"r": 4})
    model = _with_lora(load_causal_lm(tiny_llama, torch.bfloat16), cfg, None)
    loaded = LoadedModel(model, load_tokenizer(tiny_llama), tiny_llama, True, torch.device("cpu"), torch.bfloat16,
                         param_count=0)
    trainable = dict(loaded.trainable_parameters)
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)

    ids = torch.randint(10, 200, (2, 16))
    segments = torch.zeros_like(ids)
    assert mask_dtype(loaded) == torch.bfloat16
    positions = torch.arange(16).expand(2, -1)
    logps = forward_logps(loaded, ids, positions, ids, attention_bias(segments, mask_dtype(loaded)))
    assert logps.dtype == torch.float32
    (-logps.sum()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable.values())
    assert all(p.grad is None for p in frozen)
